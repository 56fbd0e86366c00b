// Package demo runs the project end to end on one machine: a server namespace and a client
// namespace joined by a veth pair, `xdpcache serve` with the kernel path in native XDP mode and the
// reply mark on, and `xdpcache bench` with a Zipf workload from the client side. It prints the latency
// split, writes the JSON and plot under a results folder, and removes everything it created on exit.
//
// Where namespaces or native XDP are not possible it falls back, first to generic XDP on lo, then to
// userspace only, and says why in one line.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/xdpcache/xdpcache/internal/lab"
)

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
	name string   // "veth pair between namespaces, native XDP", ...
	lab  *lab.Lab // the namespaces, or loopback
	mode string   // serve --xdp-mode on the lab's server interface; "": userspace only
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
		top.lab.Close()
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
		return nil, errors.New("network namespaces need root (run as root: make demo)")
	}
	l, err := lab.New("xcdemo", cfg.Port)
	if err != nil {
		return nil, err
	}
	return &topology{name: "veth pair between namespaces, native XDP", lab: l, mode: "native"}, nil
}

func loTopology(cfg Config) (*topology, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("XDP needs root (run as root: make demo)")
	}
	return &topology{name: "loopback, generic XDP", lab: lab.Local(cfg.Port), mode: "generic"}, nil
}

func userspaceTopology(cfg Config) (*topology, error) {
	return &topology{name: "loopback, userspace only (no kernel path)", lab: lab.Local(cfg.Port)}, nil
}

func runOn(ctx context.Context, cfg Config, top *topology, out, errw io.Writer, say func(string, ...any)) error {
	say("running on: %s", top.name)
	l := top.lab
	serveLog := filepath.Join(cfg.ResultsDir, "serve.log")
	serve, err := l.StartServer(ctx, "serve", serveLog,
		l.ServerCommand(-1, l.ServeArgs(cfg.Binary, top.mode, "--admission", "always")...))
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return &fallbackError{fmt.Errorf("server did not come up on %s: %w", l.ServerAddr(), err)}
	}
	defer serve.Stop()
	if top.mode != "" {
		if line := lab.KernelPathOff(serveLog); line != "" {
			return &fallbackError{fmt.Errorf("XDP on %s failed: %s", l.ServerIf(), line)}
		}
	}

	stem := filepath.Join(cfg.ResultsDir, "bench")
	bench := l.ClientCommand(-1, cfg.Binary, "bench", "--server", l.ServerAddr(), "--proto", "udp",
		"--rate", strconv.Itoa(cfg.Rate), "--duration", cfg.Duration.String(), "--warmup", cfg.Warmup.String(),
		"--keys", strconv.Itoa(cfg.Keys), "--key-dist", "zipf", "--zipf-theta", strconv.FormatFloat(cfg.ZipfTheta, 'g', -1, 64),
		"--value-size", strconv.Itoa(cfg.ValueSize), "--get-ratio", strconv.FormatFloat(cfg.GetRatio, 'g', -1, 64),
		"--kernel-dscp", strconv.Itoa(lab.ReplyDSCP), "--json", stem+".json", "--plot", stem+".png")
	bench.Stdout, bench.Stderr = out, errw
	if err := l.Start(bench); err != nil {
		return fmt.Errorf("start bench: %w", err)
	}
	// Ctrl-C: bench is interrupted, writes what it measured, and the demo cleans up.
	if err := lab.Wait(ctx, bench); err != nil && ctx.Err() == nil {
		return fmt.Errorf("bench: %w", err)
	}
	say("results: %s.json, %s.png, server log %s", stem, stem, serveLog)
	return nil
}
