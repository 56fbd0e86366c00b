// Package lab builds the place the demo and the experiments run the real binaries in: a server and
// a client network namespace joined by a veth pair (internal/netns), with an XDP_PASS program on
// the client veth, since native XDP_TX on a veth needs a program on the peer. Where namespaces
// are not possible, Local gives the same interface on this machine's loopback.
//
// Processes are started through the Lab, which makes SIGKILL their parent-death signal, so nothing
// it starts outlives the program that started it; the Lab removes what it created on Close.
//
// A Lab is not safe for concurrent use.
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/netns"
)

// ErrSetup marks a machine that cannot build the lab (no root, no namespaces, no XDP).
var ErrSetup = errors.New("lab: cannot set up")

// ReplyDSCP marks kernel replies (46, Expedited Forwarding, easy to spot in a capture), so that
// bench can tell who answered.
const ReplyDSCP = 46

// DefaultPort is the memcached port (TCP and UDP) when New or Local is given 0.
const DefaultPort = 11211

// Lab is the two-namespace topology, or its loopback stand-in.
type Lab struct {
	// Port is the server's memcached port, TCP and UDP.
	Port int

	pair       *netns.Pair // nil in a Local lab
	clientPass io.Closer
	host       string // the server's address as the client reaches it
	spawnq     chan func()
}

// New creates the namespaces (named prefix-...) and the veth pair and puts XDP_PASS on the client
// veth. Errors wrap ErrSetup.
func New(prefix string, port int) (l *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: network namespaces and XDP need root", ErrSetup)
	}
	pair, err := netns.NewPair(prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: create network namespaces: %w", ErrSetup, err)
	}
	l = newLab(port, netns.ServerIPv4.String())
	l.pair = pair
	err = pair.Client.Do(func() (err error) {
		l.clientPass, err = bpf.AttachPass(pair.ClientIf, bpf.ModeNative)
		return err
	})
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("%w: XDP_PASS on the client veth: %w", ErrSetup, err)
	}
	return l, nil
}

// Local returns a lab on loopback in the current namespace: server and client are this machine,
// and the server's interface is lo. It creates nothing.
func Local(port int) *Lab { return newLab(port, "127.0.0.1") }

func newLab(port int, host string) *Lab {
	if port == 0 {
		port = DefaultPort
	}
	l := &Lab{Port: port, host: host, spawnq: make(chan func())}
	go l.spawner()
	return l
}

// Close removes the namespaces, and with them every program attached there. Processes still
// running are the caller's to stop first.
func (l *Lab) Close() error {
	close(l.spawnq)
	var errs []error
	if l.clientPass != nil {
		errs = append(errs, l.clientPass.Close())
	}
	if l.pair != nil {
		errs = append(errs, l.pair.Close())
	}
	return errors.Join(errs...)
}

// Pair is the namespaces and the veth pair; nil in a Local lab.
func (l *Lab) Pair() *netns.Pair { return l.pair }

// ServerHost is the server's address as the client reaches it, for serve --listen.
func (l *Lab) ServerHost() string { return l.host }

// ServerAddr is HOST:PORT of the server as the client reaches it.
func (l *Lab) ServerAddr() string { return net.JoinHostPort(l.host, strconv.Itoa(l.Port)) }

// ServerIf is the server's interface, for serve --xdp-iface: the server veth, or lo.
func (l *Lab) ServerIf() string {
	if l.pair == nil {
		return "lo"
	}
	return l.pair.ServerIf
}

// ServerCommand returns a command that runs argv on the server side, pinned to cpu unless cpu is
// negative. Start it with Start.
func (l *Lab) ServerCommand(cpu int, argv ...string) *exec.Cmd {
	var ns *netns.NS
	if l.pair != nil {
		ns = l.pair.Server
	}
	return command(ns, cpu, argv)
}

// ClientCommand is ServerCommand on the client side.
func (l *Lab) ClientCommand(cpu int, argv ...string) *exec.Cmd {
	var ns *netns.NS
	if l.pair != nil {
		ns = l.pair.Client
	}
	return command(ns, cpu, argv)
}

func command(ns *netns.NS, cpu int, argv []string) *exec.Cmd {
	var full []string
	if ns != nil {
		full = append(full, "ip", "netns", "exec", ns.Name)
	}
	if cpu >= 0 {
		full = append(full, "taskset", "-c", strconv.Itoa(cpu))
	}
	full = append(full, argv...)
	return exec.Command(full[0], full[1:]...)
}

// Start starts cmd with SIGKILL as its parent-death signal, so that it does not outlive us.
func (l *Lab) Start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	l.spawnq <- func() { errc <- cmd.Start() }
	return <-errc
}

// spawner starts every subprocess from one locked OS thread that lives as long as the lab. The
// parent-death signal fires when the parent *thread* exits, and netns.NS.Do throws threads away: a
// child forked from a pooled thread that Do later takes would be killed at once.
func (l *Lab) spawner() {
	runtime.LockOSThread()
	for f := range l.spawnq {
		f()
	}
}

// ServeArgs is the command line of `bin serve` on the lab's server address and port, quiet but
// for warnings. With mode "native" or "generic" the kernel path runs on ServerIf in that mode
// with kernel replies marked ReplyDSCP; with mode "" the server runs alone. extra goes last.
func (l *Lab) ServeArgs(bin, mode string, extra ...string) []string {
	port := strconv.Itoa(l.Port)
	argv := []string{bin, "serve", "--listen", l.host, "--port", port, "--udp-port", port, "--log-level", "warn"}
	if mode != "" {
		argv = append(argv, "--xdp-iface", l.ServerIf(), "--xdp-mode", mode,
			"--mark-kernel-replies", strconv.Itoa(ReplyDSCP))
	}
	return append(argv, extra...)
}

// KernelPathOff returns the line of a serve log that says the kernel path could not be started,
// or "" when there is none.
func KernelPathOff(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "kernel path off") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// Proc is a server process started by StartServer.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	log  *os.File
	done chan error
}

// Pid is the process's pid: `ip netns exec` and `taskset` exec into the program they run.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stop ends the process with SIGTERM (SIGKILL after 10 s) and waits for it.
func (p *Proc) Stop() {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.log.Close()
}

// StartServer starts cmd (from ServerCommand), its output going to logPath, and waits until the
// server answers memcached stats from the client side (at most 15 s).
func (l *Lab) StartServer(ctx context.Context, name, logPath string, cmd *exec.Cmd) (*Proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", logPath, err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := l.Start(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, log: f, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err = l.Stats(); err == nil {
			return p, nil
		}
		select {
		case werr := <-p.done:
			p.done <- werr
			p.Stop()
			return nil, fmt.Errorf("%s exited before answering (log %s): %v", name, logPath, werr)
		case <-ctx.Done():
			p.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("%s did not answer within 15 s (log %s): %w", name, logPath, err)
		}
	}
}

// Wait waits for cmd; when ctx ends first it interrupts cmd (SIGINT: bench then reports what it
// measured) and waits for it to exit. It returns cmd's error, or ctx's when ctx ended first.
func Wait(ctx context.Context, cmd *exec.Cmd) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGINT)
		<-done
		return ctx.Err()
	}
}

// Stats reads the server's memcached `stats` over TCP from the client side.
func (l *Lab) Stats() (map[string]string, error) {
	var c net.Conn
	dial := func() (err error) {
		c, err = net.DialTimeout("tcp", l.ServerAddr(), time.Second)
		return err
	}
	var err error
	if l.pair != nil {
		err = l.pair.Client.Do(dial)
	} else {
		err = dial()
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", l.ServerAddr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "stats\r\n"); err != nil {
		return nil, fmt.Errorf("send stats: %w", err)
	}
	return ParseStats(bufio.NewReader(c))
}

// ParseStats reads "STAT name value" lines up to END.
func ParseStats(r *bufio.Reader) (map[string]string, error) {
	out := map[string]string{}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("read stats: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "END" {
			return out, nil
		}
		f := strings.SplitN(line, " ", 3)
		if len(f) != 3 || f[0] != "STAT" {
			return nil, fmt.Errorf("read stats: unexpected line %q", line)
		}
		out[f[1]] = f[2]
	}
}

// StatUint returns a numeric stat, 0 when absent.
func StatUint(m map[string]string, name string) uint64 {
	v, _ := strconv.ParseUint(m[name], 10, 64)
	return v
}
