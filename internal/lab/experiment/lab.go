// Package experiment runs the experiments shipped with the load generator (docs/EXPERIMENTS.md):
// the userspace latency trade-off with the kernel path on and off (mix), throughput against our
// server alone, Debian's memcached and a bare XDP echo program (throughput), server CPU per GET
// (cpu), and the kernel share against kernel cache size and Zipf skew (sweep).
//
// Every experiment runs on a Lab: internal/lab's two namespaces joined by a veth pair, with
// threaded NAPI on both veths and each NAPI thread pinned next to its side's processes. Without
// threaded NAPI a veth's receive work, the XDP program included, runs in softirq on whichever CPU
// sent the packet, so the kernel path would be charged to the client's core and the server core's
// figures would mean nothing.
//
// Servers and benches are the real binaries, run as subprocesses under `ip netns exec` and
// `taskset`. Progress goes to the Lab's log writer; results go to files under the run's folder.
package experiment

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/lab"
	"github.com/xdpcache/xdpcache/internal/netns"
)

// ErrSetup marks a machine that cannot run the experiments (no root, no namespaces, no XDP).
var ErrSetup = lab.ErrSetup

// schedFIFO is SCHED_FIFO from sched.h.
const schedFIFO = 1

// Lab is the two-namespace lab with its pinning. Not safe for concurrent use.
type Lab struct {
	*lab.Lab
	Bin       string // xdpcache binary
	ServerCPU int
	ClientCPU int
	Log       io.Writer
	foreign   map[int]bool // NAPI threads that existed before this lab (other tests' pairs)
	stats     io.Closer
}

// NewLab builds the lab, turns on threaded NAPI on both veths and enables the kernel's BPF
// run-time statistics until Close.
func NewLab(bin string, serverCPU, clientCPU int, log io.Writer) (l *Lab, err error) {
	l = &Lab{Bin: bin, ServerCPU: serverCPU, ClientCPU: clientCPU, Log: log}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: namespaces and XDP need root", ErrSetup)
	}
	if l.foreign, err = napiThreads(); err != nil {
		return nil, err
	}
	if l.Lab, err = lab.New("xcexp", lab.DefaultPort); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	pair := l.Pair()
	// GRO gives a veth its NAPI instance even without an XDP program (the server veth when
	// serve runs without the kernel path); threaded NAPI then moves its work into a kthread.
	for _, side := range []struct {
		ns *netns.NS
		nd string
	}{{pair.Server, pair.ServerIf}, {pair.Client, pair.ClientIf}} {
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
	if err := run("ip", "netns", "exec", pair.Client.Name, "ethtool", "-K", pair.ClientIf, "tx", "off"); err != nil {
		return nil, fmt.Errorf("%w: checksum offload off on %s: %w", ErrSetup, pair.ClientIf, err)
	}
	if l.stats, err = bpf.EnableStats(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	return l, l.PinNAPI()
}

// Close removes the namespaces (and with them every program attached there).
func (l *Lab) Close() error {
	var err error
	if l.stats != nil {
		err = l.stats.Close()
	}
	if l.Lab != nil {
		err = errors.Join(l.Lab.Close(), err)
	}
	return err
}

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
		if strings.HasPrefix(comm, "napi/"+l.ServerIf()+"-") {
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
func (l *Lab) ServerNAPI() ([]int, error) { return l.napiOf(true) }

// ClientNAPI returns the pids of the client veth's NAPI threads: the client's receive work.
func (l *Lab) ClientNAPI() ([]int, error) { return l.napiOf(false) }

func (l *Lab) napiOf(server bool) ([]int, error) {
	threads, err := napiComms()
	if err != nil {
		return nil, err
	}
	var pids []int
	for pid, comm := range threads {
		if !l.foreign[pid] && strings.HasPrefix(comm, "napi/"+l.ServerIf()+"-") == server {
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

// startServer runs argv (a server binary and its flags) in the server namespace pinned to the
// server CPU, logging to logPath, and waits until it answers memcached stats over TCP.
func (l *Lab) startServer(ctx context.Context, name, logPath string, argv ...string) (*lab.Proc, error) {
	p, err := l.StartServer(ctx, name, logPath, l.ServerCommand(l.ServerCPU, argv...))
	if err != nil {
		return nil, err
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
func (l *Lab) Serve(ctx context.Context, dir string, kernel bool, extra ...string) (*lab.Proc, error) {
	mode, name := "", "serve"
	if kernel {
		mode, name = "native", "serve+xdp"
	}
	logPath := filepath.Join(dir, "serve.log")
	p, err := l.startServer(ctx, name, logPath, l.ServeArgs(l.Bin, mode, extra...)...)
	if err != nil {
		return nil, err
	}
	if kernel {
		if line := lab.KernelPathOff(logPath); line != "" {
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
func (l *Lab) Memcached(ctx context.Context, dir string) (*lab.Proc, error) {
	bin, err := exec.LookPath("memcached")
	if err != nil {
		return nil, fmt.Errorf("%w: memcached not installed: %w", ErrSetup, err)
	}
	port := strconv.Itoa(l.Port)
	return l.startServer(ctx, "memcached", filepath.Join(dir, "memcached.log"), bin, "-u", "nobody",
		"-U", port, "-p", port, "-l", l.ServerHost(), "-t", "1", "-m", "256")
}

// AttachEcho puts the bare XDP echo program on the server veth (native); Close detaches it.
func (l *Lab) AttachEcho() (io.Closer, error) {
	var lk link.Link
	err := l.Pair().Server.Do(func() error {
		prog, err := bpf.LoadEcho(uint16(l.Port))
		if err != nil {
			return err
		}
		defer prog.Close()
		lk, _, err = bpf.AttachProgram(prog, l.ServerIf(), bpf.ModeNative)
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
	err := l.Pair().Server.Do(func() error {
		lk, err := netlink.LinkByName(l.ServerIf())
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

// BenchCmd starts `xdpcache bench` in the client namespace pinned to the client CPU; the table
// goes to stem.table, progress to stem.log, the report to stem.json.
func (l *Lab) BenchCmd(stem string, args ...string) (*exec.Cmd, error) {
	argv := append([]string{l.Bin, "bench", "--server", l.ServerAddr(), "--json", stem + ".json"}, args...)
	cmd := l.ClientCommand(l.ClientCPU, argv...)
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
	if err := l.Start(cmd); err != nil {
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

// waitBench waits for a bench started by BenchCmd and reads its report; when ctx ends first,
// bench is interrupted and ctx's error returned.
func waitBench(ctx context.Context, cmd *exec.Cmd, stem string) (*Report, error) {
	if err := lab.Wait(ctx, cmd); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("bench (log %s.log): %w", stem, err)
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
