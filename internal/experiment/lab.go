// Package experiment runs the experiments shipped with the load generator (docs/EXPERIMENTS.md):
// the userspace latency trade-off with the kernel path on and off (mix), throughput against our
// server alone, Debian's memcached and a bare XDP echo program (throughput), server CPU per GET
// (cpu), and the kernel share against kernel cache size and Zipf skew (sweep).
//
// Every experiment runs on a Lab: a server and a client network namespace joined by a veth pair,
// XDP_PASS on the client veth (native XDP_TX on a veth needs a program on the peer), and threaded
// NAPI on both veths with each NAPI thread pinned next to its side's processes. Without threaded
// NAPI a veth's receive work, the XDP program included, runs in softirq on whichever CPU sent the
// packet, so the kernel path would be charged to the client's core and the server core's figures
// would mean nothing.
//
// Servers and benches are the real binaries, run as subprocesses under `ip netns exec` and
// `taskset`. Progress goes to the Lab's log writer; results go to files under the run's folder.
package experiment

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
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/netns"
)

// ErrSetup marks a machine that cannot run the experiments (no root, no namespaces, no XDP).
var ErrSetup = errors.New("experiment: cannot set up")

// ReplyDSCP marks kernel replies so that bench can tell who answered.
const ReplyDSCP = 46

// schedFIFO is SCHED_FIFO from sched.h.
const schedFIFO = 1

// Port is the memcached port inside the server namespace (TCP and UDP).
const Port = 11211

// Lab is the two-namespace topology with its pinning. Not safe for concurrent use.
type Lab struct {
	Bin        string // xdpcache binary
	ServerCPU  int
	ClientCPU  int
	Log        io.Writer
	pair       *netns.Pair
	clientPass link.Link
	foreign    map[int]bool // NAPI threads that existed before this lab (other tests' pairs)
	stats      io.Closer
	spawnq     chan func()
}

// NewLab creates the namespaces and the veth pair, puts XDP_PASS on the client veth, turns on
// threaded NAPI on both ends and enables the kernel's BPF run-time statistics until Close.
func NewLab(bin string, serverCPU, clientCPU int, log io.Writer) (l *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: namespaces and XDP need root", ErrSetup)
	}
	l = &Lab{Bin: bin, ServerCPU: serverCPU, ClientCPU: clientCPU, Log: log, spawnq: make(chan func())}
	go l.spawner()
	if l.foreign, err = napiThreads(); err != nil {
		return nil, err
	}
	if l.pair, err = netns.NewPair("xcexp"); err != nil {
		return nil, fmt.Errorf("%w: create namespaces: %w", ErrSetup, err)
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	err = l.pair.Client.Do(func() (err error) {
		l.clientPass, err = bpf.AttachPass(l.pair.ClientIf, bpf.ModeNative)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: XDP_PASS on the client veth: %w", ErrSetup, err)
	}
	// GRO gives a veth its NAPI instance even without an XDP program (the server veth when
	// serve runs without the kernel path); threaded NAPI then moves its work into a kthread.
	for _, side := range []struct {
		ns *netns.NS
		nd string
	}{{l.pair.Server, l.pair.ServerIf}, {l.pair.Client, l.pair.ClientIf}} {
		if err := run("ip", "netns", "exec", side.ns.Name, "ethtool", "-K", side.nd, "gro", "on"); err != nil {
			return nil, fmt.Errorf("%w: GRO on %s: %w", ErrSetup, side.nd, err)
		}
		if err := run("ip", "netns", "exec", side.ns.Name, "sh", "-c", "echo 1 > /sys/class/net/"+side.nd+"/threaded"); err != nil {
			return nil, fmt.Errorf("%w: threaded NAPI on %s: %w", ErrSetup, side.nd, err)
		}
	}
	// With checksum offload the client's datagrams leave with only the pseudo-header sum; the bare
	// echo program bounces them unchanged and the client's stack would drop them as corrupt.
	// Full checksums from the client, in every case alike.
	if err := run("ip", "netns", "exec", l.pair.Client.Name, "ethtool", "-K", l.pair.ClientIf, "tx", "off"); err != nil {
		return nil, fmt.Errorf("%w: checksum offload off on %s: %w", ErrSetup, l.pair.ClientIf, err)
	}
	if l.stats, err = bpf.EnableStats(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	return l, l.PinNAPI()
}

// spawner starts every subprocess from one locked OS thread that lives as long as the lab.
// Pdeathsig fires when the parent *thread* exits, and netns.Do throws threads away: a child forked
// from a pooled thread that Do later takes would be killed at once.
func (l *Lab) spawner() {
	runtime.LockOSThread()
	for f := range l.spawnq {
		f()
	}
}

// start starts cmd with SIGKILL as its parent-death signal, so nothing outlives the experiment.
func (l *Lab) start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	l.spawnq <- func() { errc <- cmd.Start() }
	return <-errc
}

// Close removes the namespaces (and with them every program attached there).
func (l *Lab) Close() error {
	close(l.spawnq)
	var errs []error
	if l.clientPass != nil {
		errs = append(errs, l.clientPass.Close())
	}
	if l.pair != nil {
		errs = append(errs, l.pair.Close())
	}
	if l.stats != nil {
		errs = append(errs, l.stats.Close())
	}
	return errors.Join(errs...)
}

// ServerAddr is HOST:PORT of the server inside the server namespace.
func (l *Lab) ServerAddr() string {
	return net.JoinHostPort(netns.ServerIPv4.String(), strconv.Itoa(Port))
}

// ServerIf is the server veth's name, for serve --xdp-iface.
func (l *Lab) ServerIf() string { return l.pair.ServerIf }

// PinNAPI pins this lab's NAPI threads: the server veth's to the server CPU, the client's to the
// client CPU. Attaching or detaching XDP can recreate them, so it runs again after every change.
func (l *Lab) PinNAPI() error {
	threads, err := napiComms()
	if err != nil {
		return err
	}
	found := 0
	for pid, comm := range threads {
		if l.foreign[pid] {
			continue
		}
		cpu := l.ClientCPU
		if strings.HasPrefix(comm, "napi/"+l.pair.ServerIf+"-") {
			cpu = l.ServerCPU
		}
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(pid, &set); err != nil {
			return fmt.Errorf("pin NAPI thread %d: %w", pid, err)
		}
		// Softirq work preempts tasks; a SCHED_OTHER NAPI thread would queue behind the spinning
		// bench senders for milliseconds and the figures would measure the scheduler.
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: schedFIFO, Priority: 50}
		if err := unix.SchedSetAttr(pid, &attr, 0); err != nil {
			return fmt.Errorf("make NAPI thread %d SCHED_FIFO: %w", pid, err)
		}
		found++
	}
	if found == 0 {
		return fmt.Errorf("%w: no threaded NAPI kthread for the veth pair", ErrSetup)
	}
	return nil
}

// ServerNAPI returns the pids of the server veth's NAPI threads.
func (l *Lab) ServerNAPI() ([]int, error) {
	threads, err := napiComms()
	if err != nil {
		return nil, err
	}
	var pids []int
	for pid, comm := range threads {
		if !l.foreign[pid] && strings.HasPrefix(comm, "napi/"+l.pair.ServerIf+"-") {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// napiThreads is the set of pids of NAPI kthreads of veths made by internal/netns.
func napiThreads() (map[int]bool, error) {
	m, err := napiComms()
	if err != nil {
		return nil, err
	}
	out := make(map[int]bool, len(m))
	for pid := range m {
		out[pid] = true
	}
	return out, nil
}

// napiComms maps the pid of every NAPI kthread of a veth made by internal/netns to its name.
func napiComms() (map[int]string, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	out := map[int]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil {
			continue
		}
		if c := strings.TrimSpace(string(b)); strings.HasPrefix(c, "napi/xc-") {
			out[pid] = c
		}
	}
	return out, nil
}

// Proc is a server process started in the server namespace.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	log  *os.File
	done chan error
}

// Pid is the server's own pid: `ip netns exec` and `taskset` exec into it.
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

// StartServer runs argv (a server binary and its flags) in the server namespace pinned to the
// server CPU, logging to logPath, and waits until it answers memcached stats over TCP.
func (l *Lab) StartServer(ctx context.Context, name, logPath string, argv ...string) (*Proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", logPath, err)
	}
	full := append([]string{"netns", "exec", l.pair.Server.Name, "taskset", "-c", strconv.Itoa(l.ServerCPU)}, argv...)
	cmd := exec.Command("ip", full...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := l.start(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, log: f, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err = l.Stats(); err == nil {
			break
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
	// Attaching XDP may have replaced the server veth's NAPI instance.
	if err := l.PinNAPI(); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// Serve starts `xdpcache serve` on the server veth; kernel adds the XDP program in native mode
// with replies marked. extra flags go last.
func (l *Lab) Serve(ctx context.Context, dir string, kernel bool, extra ...string) (*Proc, error) {
	argv := []string{l.Bin, "serve", "--listen", netns.ServerIPv4.String(), "--port", strconv.Itoa(Port),
		"--udp-port", strconv.Itoa(Port), "--log-level", "warn"}
	if kernel {
		argv = append(argv, "--xdp-iface", l.pair.ServerIf, "--xdp-mode", "native",
			"--mark-kernel-replies", strconv.Itoa(ReplyDSCP))
	}
	argv = append(argv, extra...)
	name := "serve"
	if kernel {
		name = "serve+xdp"
	}
	p, err := l.StartServer(ctx, name, filepath.Join(dir, "serve.log"), argv...)
	if err != nil {
		return nil, err
	}
	if kernel {
		if line := findLine(filepath.Join(dir, "serve.log"), "kernel path off"); line != "" {
			p.Stop()
			return nil, fmt.Errorf("%w: serve could not attach XDP: %s", ErrSetup, line)
		}
		if _, err := l.ServerProgram(); err != nil {
			p.Stop()
			return nil, err
		}
	}
	return p, nil
}

// Memcached starts Debian's memcached with UDP on, one worker thread.
func (l *Lab) Memcached(ctx context.Context, dir string) (*Proc, error) {
	bin, err := exec.LookPath("memcached")
	if err != nil {
		return nil, fmt.Errorf("%w: memcached not installed: %w", ErrSetup, err)
	}
	return l.StartServer(ctx, "memcached", filepath.Join(dir, "memcached.log"), bin, "-u", "nobody",
		"-U", strconv.Itoa(Port), "-p", strconv.Itoa(Port), "-l", netns.ServerIPv4.String(), "-t", "1", "-m", "256")
}

// AttachEcho puts the bare XDP echo program on the server veth (native); Close detaches it.
func (l *Lab) AttachEcho() (io.Closer, error) {
	var lk link.Link
	err := l.pair.Server.Do(func() error {
		prog, err := bpf.LoadEcho(Port)
		if err != nil {
			return err
		}
		defer prog.Close()
		lk, _, err = bpf.AttachProgram(prog, l.pair.ServerIf, bpf.ModeNative)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach echo to the server veth: %w", err)
	}
	if err := l.PinNAPI(); err != nil {
		lk.Close()
		return nil, err
	}
	return lk, nil
}

// ServerProgram opens the XDP program attached to the server veth, for its run-time statistics.
func (l *Lab) ServerProgram() (*ebpf.Program, error) {
	var id uint32
	err := l.pair.Server.Do(func() error {
		lk, err := netlink.LinkByName(l.pair.ServerIf)
		if err != nil {
			return err
		}
		if x := lk.Attrs().Xdp; x != nil && x.Attached {
			id = x.ProgId
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find the server veth's XDP program: %w", err)
	}
	if id == 0 {
		return nil, fmt.Errorf("find the server veth's XDP program: none attached")
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return nil, fmt.Errorf("open XDP program %d: %w", id, err)
	}
	return prog, nil
}

// Stats reads the server's memcached `stats` over TCP from the client namespace.
func (l *Lab) Stats() (map[string]string, error) {
	var c net.Conn
	err := l.pair.Client.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", l.ServerAddr(), time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", l.ServerAddr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "stats\r\n"); err != nil {
		return nil, fmt.Errorf("send stats: %w", err)
	}
	return parseStats(bufio.NewReader(c))
}

// parseStats reads "STAT name value" lines up to END.
func parseStats(r *bufio.Reader) (map[string]string, error) {
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

// statUint returns a numeric stat, 0 when absent.
func statUint(m map[string]string, name string) uint64 {
	v, _ := strconv.ParseUint(m[name], 10, 64)
	return v
}

// BenchCmd starts `xdpcache bench` in the client namespace pinned to the client CPU; the table
// goes to stem.table, progress to stem.log, the report to stem.json.
func (l *Lab) BenchCmd(stem string, args ...string) (*exec.Cmd, error) {
	argv := append([]string{"netns", "exec", l.pair.Client.Name, "taskset", "-c", strconv.Itoa(l.ClientCPU),
		l.Bin, "bench", "--server", l.ServerAddr(), "--json", stem + ".json"}, args...)
	cmd := exec.Command("ip", argv...)
	out, err := os.Create(stem + ".table")
	if err != nil {
		return nil, fmt.Errorf("create %s.table: %w", stem, err)
	}
	logf, err := os.Create(stem + ".log")
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("create %s.log: %w", stem, err)
	}
	cmd.Stdout, cmd.Stderr = out, logf
	if err := l.start(cmd); err != nil {
		out.Close()
		logf.Close()
		return nil, fmt.Errorf("start bench: %w", err)
	}
	// The files stay open in the child; ours can go.
	out.Close()
	logf.Close()
	return cmd, nil
}

// Bench runs bench to completion and reads its report.
func (l *Lab) Bench(ctx context.Context, stem string, args ...string) (*Report, error) {
	cmd, err := l.BenchCmd(stem, args...)
	if err != nil {
		return nil, err
	}
	return waitBench(ctx, cmd, stem)
}

func waitBench(ctx context.Context, cmd *exec.Cmd, stem string) (*Report, error) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("bench (log %s.log): %w", stem, err)
		}
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGINT)
		<-done
		return nil, ctx.Err()
	}
	return ReadReport(stem + ".json")
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// findLine returns the first line of the file that contains s, or "".
func findLine(path, s string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, s) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
