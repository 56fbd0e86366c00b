package experiment

import (
	"context"
	"io"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// TestLab checks what every figure depends on: the server veth's NAPI thread runs on the server
// CPU under SCHED_FIFO, the echo program is the one found on the server veth, and memcached
// started in the server namespace answers stats from the client namespace and is charged CPU.
func TestLab(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "ethtool")
	testenv.LookPath(t, "memcached")
	lb, err := NewLab("/nonexistent", 0, 1, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()

	echo, err := lb.AttachEcho()
	if err != nil {
		t.Fatal(err)
	}
	pids, err := lb.ServerNAPI()
	if err != nil || len(pids) == 0 {
		t.Fatalf("server NAPI threads %v, %v", pids, err)
	}
	for _, pid := range pids {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(pid, &set); err != nil {
			t.Fatal(err)
		}
		if set.Count() != 1 || !set.IsSet(0) {
			t.Errorf("NAPI thread %d may run on %d CPUs, CPU 0 set: %v", pid, set.Count(), set.IsSet(0))
		}
		attr, err := unix.SchedGetAttr(pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		if attr.Policy != schedFIFO {
			t.Errorf("NAPI thread %d has policy %d, want SCHED_FIFO", pid, attr.Policy)
		}
	}
	prog, err := lb.ServerProgram()
	if err != nil {
		t.Fatal(err)
	}
	info, err := prog.Info()
	prog.Close()
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "xdp_echo" {
		t.Fatalf("program on the server veth is %q, want xdp_echo", info.Name)
	}
	echo.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mc, err := lb.Memcached(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Stop()
	st, err := lb.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st["version"] == "" {
		t.Fatalf("stats without version: %v", st)
	}
	out, err := exec.Command("taskset", "-p", "-c", strconv.Itoa(mc.Pid())).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if want := "list: 0\n"; len(out) < len(want) || string(out[len(out)-len(want):]) != want {
		t.Fatalf("memcached affinity: %s", out)
	}
	if _, err := ProcCPU(mc.Pid()); err != nil {
		t.Fatal(err)
	}
}
