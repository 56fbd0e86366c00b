package lab

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

func TestParseStats(t *testing.T) {
	in := "STAT pid 7\r\nSTAT cmd_get 1234\r\nSTAT version 1.6.18 x\r\nEND\r\n"
	m, err := ParseStats(bufio.NewReader(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	if StatUint(m, "cmd_get") != 1234 || m["version"] != "1.6.18 x" || StatUint(m, "absent") != 0 {
		t.Fatalf("parsed %v", m)
	}
	if _, err := ParseStats(bufio.NewReader(strings.NewReader("STAT a 1\r\nERROR\r\n"))); err == nil {
		t.Fatal("a reply that is not stats parsed")
	}
	if _, err := ParseStats(bufio.NewReader(strings.NewReader("STAT a 1\r\n"))); err == nil {
		t.Fatal("a reply without END parsed")
	}
}

func TestServeArgs(t *testing.T) {
	l := Local(0)
	defer l.Close()
	if got, want := l.ServeArgs("xc", "", "--admission", "always"), []string{"xc", "serve", "--listen",
		"127.0.0.1", "--port", "11211", "--udp-port", "11211", "--log-level", "warn", "--admission", "always"}; !reflect.DeepEqual(got, want) {
		t.Errorf("userspace only:\n got %q\nwant %q", got, want)
	}
	got := strings.Join(l.ServeArgs("xc", "generic"), " ")
	if want := "--xdp-iface lo --xdp-mode generic --mark-kernel-replies " + strconv.Itoa(ReplyDSCP); !strings.HasSuffix(got, want) {
		t.Errorf("kernel path: %q, want it to end in %q", got, want)
	}
}

func TestKernelPathOff(t *testing.T) {
	p := filepath.Join(t.TempDir(), "serve.log")
	if err := os.WriteFile(p, []byte("info serving TCP\n  error kernel path off: the server runs without it  \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := KernelPathOff(p); got != "error kernel path off: the server runs without it" {
		t.Errorf("KernelPathOff = %q", got)
	}
	if err := os.WriteFile(p, []byte("info kernel path on\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := KernelPathOff(p); got != "" {
		t.Errorf("KernelPathOff on a good log = %q", got)
	}
}

// TestWaitInterrupts: when ctx ends, the command gets SIGINT and Wait returns ctx's error once
// it has exited.
func TestWaitInterrupts(t *testing.T) {
	l := Local(0)
	defer l.Close()
	cmd := l.ClientCommand(-1, testenv.LookPath(t, "sleep"), "30")
	if err := l.Start(cmd); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := Wait(ctx, cmd); err != context.DeadlineExceeded {
		t.Fatalf("Wait = %v, want the context's deadline", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("Wait took %v", took)
	}
	if cmd.ProcessState == nil || cmd.ProcessState.Success() {
		t.Fatalf("sleep was not interrupted: %v", cmd.ProcessState)
	}
}

// TestLab builds the namespaces, runs memcached in the server namespace pinned to CPU 0, reads
// its stats from the client namespace, and checks that Close removes the namespaces.
func TestLab(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "ip")
	testenv.LookPath(t, "taskset")
	mc := testenv.LookPath(t, "memcached")
	l, err := New("xclab", 0)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			l.Close()
		}
	}()
	if l.ServerIf() != l.Pair().ServerIf || l.ServerAddr() != "198.18.0.1:11211" {
		t.Fatalf("server %s on %s", l.ServerAddr(), l.ServerIf())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	port := strconv.Itoa(l.Port)
	p, err := l.StartServer(ctx, "memcached", filepath.Join(t.TempDir(), "memcached.log"),
		l.ServerCommand(0, mc, "-u", "nobody", "-p", port, "-U", "0", "-l", l.ServerHost(), "-t", "1"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := l.Stats()
	if err != nil {
		p.Stop()
		t.Fatal(err)
	}
	if st["version"] == "" || StatUint(st, "pid") != uint64(p.Pid()) {
		t.Errorf("stats from the client namespace: %v (memcached pid %d)", st, p.Pid())
	}
	out, err := exec.Command("taskset", "-p", "-c", strconv.Itoa(p.Pid())).CombinedOutput()
	if err != nil || !strings.HasSuffix(string(out), "list: 0\n") {
		t.Errorf("memcached affinity: %s %v", out, err)
	}
	p.Stop()
	if _, err := l.Stats(); err == nil {
		t.Error("stats answered after Stop")
	}
	names := []string{l.Pair().Server.Name, l.Pair().Client.Name}
	closed = true
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.Contains(string(list), n) {
			t.Errorf("namespace %s left after Close", n)
		}
	}
}
