package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// Clients no one here wrote, against `xdpcache serve` with the kernel path attached and against
// Debian's memcached as the reference: libmemcached's memcaslap (TCP and UDP, verifying what it
// reads), pymemcache and pylibmc (Debian's python3 packages), and gomemcache; twemproxy
// (nutcracker) in front of two servers is in nutcracker_test.go.

// loPort is where serve listens on the loopback of a test namespace: not memcached's default, as
// an operator moving a port would.
const loPort = 21911

// loServe is `xdpcache serve` on 127.0.0.1:loPort inside the server namespace of a veth pair,
// with the XDP program on that namespace's lo in generic mode. The pair's veth gives the
// namespace a non-loopback IPv4 address: libmemcached resolves servers with AI_ADDRCONFIG, which
// finds no IPv4 address in a namespace that holds only lo.
type loServe struct {
	pair *netns.Pair
	addr netip.AddrPort
	proc *serveProc
}

func startLoServe(t *testing.T, prefix string, extra ...string) *loServe {
	t.Helper()
	testenv.RequireRoot(t)
	s := &loServe{pair: newPassPair(t, prefix), addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), loPort)}
	args := append([]string{"-l", "127.0.0.1", "-p", strconv.Itoa(loPort), "-U", strconv.Itoa(loPort),
		"--xdp-iface", "lo", "--xdp-mode", "generic", "--admission", "always",
		"--mark-kernel-replies", strconv.Itoa(testDSCP), "--log-format", "json"}, extra...)
	s.proc = startServeIn(t, s.pair.Server, "lo", func() bool { return serveReadyIn(s.pair.Server, s.addr.String()) }, args...)
	return s
}

// stat reads one `stats` field of the server over a fresh TCP connection.
func (s *loServe) stat(t *testing.T, name string) int64 {
	t.Helper()
	c := dialTextIn(t, s.pair.Server, s.addr.String())
	defer c.conn.Close()
	return c.stat(t, name)
}

// nsCommand is name run inside ns (the test's own namespace when ns is nil).
func nsCommand(ctx context.Context, ns *netns.NS, name string, args ...string) *exec.Cmd {
	if ns == nil {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// memcaslapRun runs memcaslap for a short while against server from ns (nil: this namespace):
// one thread, four concurrent clients, 32-byte values, a small key window so that keys are read
// again, and every fifth get verified against what was written. No --overwrite: with it memcaslap
// reports failed verifications against memcached itself. It returns the counters memcaslap prints
// ("cmd_get: 123").
func memcaslapRun(t *testing.T, ns *netns.NS, server string, udp bool) map[string]int64 {
	t.Helper()
	bin := testenv.LookPath(t, "memcaslap")
	args := []string{"--servers=" + server, "--time=2s", "--threads=1", "--concurrency=4",
		"--win_size=1k", "--fixed_size=32", "--verify=0.2"}
	if udp {
		args = append(args, "--udp")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := nsCommand(ctx, ns, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("memcaslap %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, out, stderr.String())
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Errorf("memcaslap %v wrote to stderr:\n%s", args, s)
	}
	res := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64); err == nil {
			res[strings.TrimSpace(name)] = n
		}
	}
	t.Logf("memcaslap udp=%v against %s: %v", udp, server, res)
	return res
}

// checkMemcaslap fails the test unless memcaslap got and set something and saw no miss, no
// failed verification and, over UDP, no lost, reordered or timed out datagram.
func checkMemcaslap(t *testing.T, res map[string]int64, udp bool) {
	t.Helper()
	for _, name := range []string{"cmd_get", "cmd_set"} {
		if v, ok := res[name]; !ok || v <= 0 {
			t.Errorf("memcaslap %s = %d (present %v), want > 0", name, v, ok)
		}
	}
	zero := []string{"get_misses", "verify_misses", "verify_failed"}
	if udp {
		zero = append(zero, "packet_disorder", "packet_drop", "udp_timeout")
	}
	for _, name := range zero {
		if v, ok := res[name]; !ok || v != 0 {
			t.Errorf("memcaslap %s = %d (present %v), want 0", name, v, ok)
		}
	}
}

// TestMemcaslap runs libmemcached's load tool with verification over TCP and UDP: against
// memcached, which shows what a clean run looks like, then against serve with the kernel path on
// lo (generic mode) and on a veth in native mode. Over UDP the kernel must answer part of the
// gets: memcaslap's frames are what a real UDP client sends.
func TestMemcaslap(t *testing.T) {
	testenv.LookPath(t, "memcaslap")

	t.Run("memcached", func(t *testing.T) {
		m := testenv.StartMemcached(t, true)
		for _, udp := range []bool{false, true} {
			checkMemcaslap(t, memcaslapRun(t, nil, m.Addr, udp), udp)
		}
	})

	t.Run("serve-lo-generic", func(t *testing.T) {
		s := startLoServe(t, "xcslap")
		checkMemcaslap(t, memcaslapRun(t, s.pair.Server, s.addr.String(), false), false)

		hits := s.stat(t, "kernel_get_hits")
		res := memcaslapRun(t, s.pair.Server, s.addr.String(), true)
		checkMemcaslap(t, res, true)
		kernel := s.stat(t, "kernel_get_hits") - hits
		t.Logf("kernel answered %d of memcaslap's %d UDP gets", kernel, res["cmd_get"])
		if kernel <= 0 {
			t.Errorf("kernel_get_hits rose by %d during memcaslap's UDP run, want > 0", kernel)
		}
	})

	t.Run("serve-veth-native", func(t *testing.T) {
		r := newBareRig(t)
		r.startServe(t)
		stat := func() int64 {
			c := r.dialText(t)
			defer c.conn.Close()
			return c.stat(t, "kernel_get_hits")
		}
		checkMemcaslap(t, memcaslapRun(t, r.pair.Client, r.addr.String(), false), false)

		hits := stat()
		res := memcaslapRun(t, r.pair.Client, r.addr.String(), true)
		checkMemcaslap(t, res, true)
		kernel := stat() - hits
		t.Logf("kernel answered %d of memcaslap's %d UDP gets", kernel, res["cmd_get"])
		if kernel <= 0 {
			t.Errorf("kernel_get_hits rose by %d during memcaslap's UDP run, want > 0", kernel)
		}
	})
}

// python3 is Debian's interpreter, where python3-pymemcache and python3-pylibmc install.
const python3 = "/usr/bin/python3"

// runPythonClient runs testdata/script against host:port from ns; the script checks every reply
// itself and prints "PASS <n> checks". Exit status 77 means its client library is missing.
func runPythonClient(t *testing.T, ns *netns.NS, script, addr, prefix string) {
	t.Helper()
	if _, err := os.Stat(python3); err != nil {
		testenv.Unavailable(t, "%s not installed: %v", python3, err)
	}
	path, err := filepath.Abs(filepath.Join("testdata", script))
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := nsCommand(ctx, ns, python3, path, host, port, prefix).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 77 {
		testenv.Unavailable(t, "%s: %s (Debian: python3-pymemcache, python3-pylibmc)", script, strings.TrimSpace(string(out)))
	}
	if err != nil || !strings.HasPrefix(string(out), "PASS ") {
		t.Fatalf("%s against %s: %v\n%s", script, addr, err, out)
	}
	t.Logf("%s against %s: %s", script, addr, strings.TrimSpace(string(out)))
}

// TestPythonClients runs pymemcache and pylibmc through set, get, gets, cas, incr, decr, delete,
// multi-get and the rest against memcached (the scripts' expectations hold there) and against
// serve with the kernel path attached on lo.
func TestPythonClients(t *testing.T) {
	scripts := []string{"pymemcache_ops.py", "pylibmc_ops.py"}
	t.Run("memcached", func(t *testing.T) {
		m := testenv.StartMemcached(t, false)
		for _, sc := range scripts {
			runPythonClient(t, nil, sc, m.Addr, "py-")
		}
	})
	t.Run("serve-lo-generic", func(t *testing.T) {
		s := startLoServe(t, "xcpy")
		for _, sc := range scripts {
			runPythonClient(t, s.pair.Server, sc, s.addr.String(), "py-")
		}
		if n := s.stat(t, "cmd_get"); n == 0 {
			t.Errorf("serve counted no gets after the python clients ran")
		}
	})
}

// udpWant is what a UDP get of key must return: value with flags, or a miss when value is "".
func udpWant(key string, flags uint32, value string) string {
	if value == "" {
		return "END\r\n"
	}
	return fmt.Sprintf("VALUE %s %d %d\r\n%s\r\nEND\r\n", key, flags, len(value), value)
}

// fillAndHit gets key over UDP until the kernel answers it with want: the first get fills the
// kernel cache from the server, the next is the kernel's.
func fillAndHit(t *testing.T, u *udpGetter, key, want string) {
	t.Helper()
	for i := 0; i < 3; i++ {
		reply, kernel, err := u.do("get " + key + "\r\n")
		if err != nil || reply != want {
			t.Fatalf("UDP get %s: %q (kernel %v) %v; want %q", key, reply, kernel, err, want)
		}
		if kernel {
			return
		}
	}
	t.Fatalf("UDP get %s: the kernel never answered", key)
}
