// Package demo runs the project end to end on one machine: a server namespace and a client
// namespace joined by a veth pair, `xdpcache serve` with the kernel path in native XDP mode and the
// reply mark on, and `xdpcache bench` with a Zipf workload from the client side. It prints the latency
// split, writes the JSON and plot under a results folder, and removes everything it created on exit.
//
// Where namespaces or native XDP are not possible it falls back, first to generic XDP on lo, then to
// userspace only, and says why in one line.
package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/netns"
)

// ReplyDSCP marks kernel replies in the demo (46, Expedited Forwarding, easy to spot in a capture).
const ReplyDSCP = 46

// Config is what the demo runs.
type Config struct {
	Binary     string        // path of the xdpcache binary to run serve and bench with
	ResultsDir string        // where bench writes JSON and plot
	Duration   time.Duration // measured phase
	Warmup     time.Duration
	Rate       int // offered GETs+SETs per second, open loop
	Keys       int
	ZipfTheta  float64
	ValueSize  int
	GetRatio   float64
	Port       int
	Force      string // "" (try all), "veth", "lo" or "userspace": skip the earlier steps
}

// topology is where serve and bench run in one attempt.
type topology struct {
	name       string   // "veth (native XDP)", ...
	serverNS   []string // command prefix that enters the server namespace (empty: root)
	clientNS   []string
	listen     string // serve --listen
	iface      string // serve --xdp-iface ("": userspace only)
	mode       string // serve --xdp-mode
	cleanup    func()
	clientPass io.Closer // XDP_PASS on the veth peer, needed for native XDP_TX on veth
}

// Run runs the demo; progress goes to errw, the bench table to out.
func Run(ctx context.Context, cfg Config, out, errw io.Writer) error {
	if err := os.MkdirAll(cfg.ResultsDir, 0o755); err != nil {
		return fmt.Errorf("create results folder: %w", err)
	}
	say := func(format string, args ...any) { fmt.Fprintf(errw, "demo: "+format+"\n", args...) }

	tops := []func() (*topology, error){
		func() (*topology, error) { return vethTopology(cfg) },
		func() (*topology, error) { return loTopology(cfg) },
		func() (*topology, error) { return userspaceTopology(cfg) },
	}
	start := map[string]int{"": 0, "veth": 0, "lo": 1, "userspace": 2}[cfg.Force]
	for i := start; i < len(tops); i++ {
		top, err := tops[i]()
		if err != nil {
			say("%v; falling back", err)
			continue
		}
		err = runOn(ctx, cfg, top, out, errw, say)
		top.cleanup()
		var fb *fallbackError
		if errors.As(err, &fb) && i+1 < len(tops) {
			say("%v; falling back", fb.err)
			continue
		}
		return err
	}
	return errors.New("no way to run the demo on this machine")
}

// fallbackError is a failure that the next topology may not have.
type fallbackError struct{ err error }

func (e *fallbackError) Error() string { return e.err.Error() }

func vethTopology(cfg Config) (*topology, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("network namespaces need root (run: sudo make demo)")
	}
	pair, err := netns.NewPair("xcdemo")
	if err != nil {
		return nil, fmt.Errorf("cannot create network namespaces: %v", err)
	}
	top := &topology{
		name:     "veth pair between namespaces, native XDP",
		serverNS: []string{"ip", "netns", "exec", pair.Server.Name},
		clientNS: []string{"ip", "netns", "exec", pair.Client.Name},
		listen:   netns.ServerIPv4.String(),
		iface:    pair.ServerIf,
		mode:     "native",
	}
	top.cleanup = func() {
		if top.clientPass != nil {
			top.clientPass.Close()
		}
		pair.Close()
	}
	// XDP_TX on a veth in native mode needs an XDP program on the peer too; XDP_PASS is enough.
	err = pair.Client.Do(func() (err error) {
		top.clientPass, err = bpf.AttachPass(pair.ClientIf, bpf.ModeNative)
		return err
	})
	if err != nil {
		top.cleanup()
		return nil, fmt.Errorf("cannot attach XDP_PASS to the client veth: %v", err)
	}
	return top, nil
}

func loTopology(cfg Config) (*topology, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("XDP needs root (run: sudo make demo)")
	}
	return &topology{name: "loopback, generic XDP", listen: "127.0.0.1", iface: "lo", mode: "generic", cleanup: func() {}}, nil
}

func userspaceTopology(cfg Config) (*topology, error) {
	return &topology{name: "loopback, userspace only (no kernel path)", listen: "127.0.0.1", cleanup: func() {}}, nil
}

func runOn(ctx context.Context, cfg Config, top *topology, out, errw io.Writer, say func(string, ...any)) error {
	say("running on: %s", top.name)
	port := strconv.Itoa(cfg.Port)
	serveArgs := []string{"serve", "--listen", top.listen, "--port", port, "--udp-port", port,
		"--log-level", "warn", "--admission", "always"}
	if top.iface != "" {
		serveArgs = append(serveArgs, "--xdp-iface", top.iface, "--xdp-mode", top.mode,
			"--mark-kernel-replies", strconv.Itoa(ReplyDSCP))
	}
	serveLog := filepath.Join(cfg.ResultsDir, "serve.log")
	logf, err := os.Create(serveLog)
	if err != nil {
		return fmt.Errorf("create %s: %w", serveLog, err)
	}
	defer logf.Close()
	serve := command(top.serverNS, cfg.Binary, serveArgs...)
	serve.Stdout, serve.Stderr = logf, logf
	if err := serve.Start(); err != nil {
		return fmt.Errorf("start serve: %w", err)
	}
	defer stop(serve)

	addr := net.JoinHostPort(top.listen, port)
	if err := waitReady(ctx, top.clientNS, cfg.Binary, addr); err != nil {
		return &fallbackError{fmt.Errorf("server did not come up on %s (log: %s): %w", addr, serveLog, err)}
	}
	if top.iface != "" {
		if line := findLine(serveLog, "kernel path off"); line != "" {
			return &fallbackError{fmt.Errorf("XDP on %s failed: %s", top.iface, line)}
		}
	}

	stem := filepath.Join(cfg.ResultsDir, "bench")
	benchArgs := []string{"bench", "--server", addr, "--proto", "udp",
		"--rate", strconv.Itoa(cfg.Rate), "--duration", cfg.Duration.String(), "--warmup", cfg.Warmup.String(),
		"--keys", strconv.Itoa(cfg.Keys), "--key-dist", "zipf", "--zipf-theta", strconv.FormatFloat(cfg.ZipfTheta, 'g', -1, 64),
		"--value-size", strconv.Itoa(cfg.ValueSize), "--get-ratio", strconv.FormatFloat(cfg.GetRatio, 'g', -1, 64),
		"--kernel-dscp", strconv.Itoa(ReplyDSCP), "--json", stem + ".json", "--plot", stem + ".png"}
	bench := command(top.clientNS, cfg.Binary, benchArgs...)
	bench.Stdout, bench.Stderr = out, errw
	if err := bench.Start(); err != nil {
		return fmt.Errorf("start bench: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- bench.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// Ctrl-C: let bench write what it measured, then clean up.
		bench.Process.Signal(syscall.SIGINT)
		err = <-done
	}
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("bench: %w", err)
	}
	say("results: %s.json, %s.png, server log %s", stem, stem, serveLog)
	return nil
}

// command runs bin with args, inside a namespace when prefix is given.
func command(prefix []string, bin string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, prefix...), bin), args...)
	c := exec.Command(argv[0], argv[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return c
}

func stop(c *exec.Cmd) {
	if c.Process == nil {
		return
	}
	c.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.Process.Kill()
		<-done
	}
}

// waitReady polls the server's stats from the client side until it answers (bounded).
func waitReady(ctx context.Context, clientNS []string, bin, addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		c := command(clientNS, bin, "stats", "--server", addr, "--count", "1", "--raw")
		c.Stdout, c.Stderr = io.Discard, io.Discard
		if last = c.Run(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return last
}

// findLine returns the first line of the file that contains s, or "".
func findLine(path, s string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return strings.TrimSpace(sc.Text())
		}
	}
	return ""
}
