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

	"github.com/bradfitz/gomemcache/memcache"

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
	return startLoServeOn(t, newPassPair(t, prefix), extra...)
}

// startLoServeOn is startLoServe in the server namespace of an existing pair.
func startLoServeOn(t *testing.T, pair *netns.Pair, extra ...string) *loServe {
	t.Helper()
	s := &loServe{pair: pair, addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), loPort)}
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

// checkKernelShare fails the test unless the kernel answered at least half of memcaslap's UDP
// gets: with a window of 1000 keys per client most gets read a key already read once, which the
// first read copied into the kernel cache.
func checkKernelShare(t *testing.T, kernelHits, gets int64) {
	t.Helper()
	t.Logf("kernel answered %d of memcaslap's %d UDP gets", kernelHits, gets)
	if kernelHits <= 0 || kernelHits < gets/2 {
		t.Errorf("kernel_get_hits rose by %d during memcaslap's UDP run of %d gets, want at least half", kernelHits, gets)
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
		checkKernelShare(t, s.stat(t, "kernel_get_hits")-hits, res["cmd_get"])
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
		checkKernelShare(t, stat()-hits, res["cmd_get"])
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
	// -B: no __pycache__ in testdata for the shared clientcheck module.
	out, err := nsCommand(ctx, ns, python3, "-B", path, host, port, prefix).CombinedOutput()
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

// gomemcacheTranscript drives c through every call gomemcache has, keys under prefix, and returns
// one line per call with what came back (CAS uniques left out: servers number them their own way).
func gomemcacheTranscript(c *memcache.Client, prefix string) []string {
	var out []string
	k := func(s string) string { return prefix + s }
	rec := func(op string, res any, err error) {
		e := "ok"
		if err != nil {
			e = err.Error()
		}
		out = append(out, fmt.Sprintf("%s -> %v %s", op, res, e))
	}
	show := func(it *memcache.Item) string {
		if it == nil {
			return "<nil>"
		}
		v := it.Value
		if len(v) > 16 {
			v = append(v[:16:16], fmt.Sprintf("...(%d bytes)", len(it.Value))...)
		}
		return fmt.Sprintf("%q flags %d", v, it.Flags)
	}
	get := func(op, key string) *memcache.Item {
		it, err := c.Get(key)
		rec(op, show(it), err)
		return it
	}

	rec("set a", nil, c.Set(&memcache.Item{Key: k("a"), Value: []byte("alpha"), Flags: 42}))
	get("get a", k("a"))
	get("get missing", k("missing"))
	rec("add a", nil, c.Add(&memcache.Item{Key: k("a"), Value: []byte("x")}))
	rec("add b", nil, c.Add(&memcache.Item{Key: k("b"), Value: []byte("beta"), Flags: 1}))
	rec("replace missing", nil, c.Replace(&memcache.Item{Key: k("missing"), Value: []byte("x")}))
	rec("replace b", nil, c.Replace(&memcache.Item{Key: k("b"), Value: []byte("beta2"), Flags: 2}))
	rec("append a", nil, c.Append(&memcache.Item{Key: k("a"), Value: []byte("-tail")}))
	rec("prepend a", nil, c.Prepend(&memcache.Item{Key: k("a"), Value: []byte("head-")}))
	rec("append missing", nil, c.Append(&memcache.Item{Key: k("missing"), Value: []byte("x")}))
	it := get("get a after append, prepend", k("a"))
	if it != nil {
		it.Value = []byte("swapped")
		rec("cas a", nil, c.CompareAndSwap(it))
		it.Value = []byte("stale")
		rec("cas a stale", nil, c.CompareAndSwap(it))
	}
	get("get a after cas", k("a"))

	rec("set n", nil, c.Set(&memcache.Item{Key: k("n"), Value: []byte("41")}))
	v, err := c.Increment(k("n"), 1)
	rec("incr n", v, err)
	v, err = c.Increment(k("n"), 1<<63)
	rec("incr n wide", v, err)
	v, err = c.Decrement(k("n"), 1<<64-1)
	rec("decr n to the floor", v, err)
	v, err = c.Increment(k("missing"), 1)
	rec("incr missing", v, err)
	v, err = c.Increment(k("a"), 1)
	rec("incr non-numeric", v, err)

	m, err := c.GetMulti([]string{k("a"), k("b"), k("missing")})
	var got []string
	for _, key := range []string{k("a"), k("b"), k("missing")} {
		got = append(got, key+"="+show(m[key]))
	}
	rec("get_multi", got, err)

	big := make([]byte, 512<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	rec("set big", nil, c.Set(&memcache.Item{Key: k("big"), Value: big}))
	if it := get("get big", k("big")); it != nil && string(it.Value) != string(big) {
		out = append(out, "get big -> value differs from what was set")
	}

	rec("touch b", nil, c.Touch(k("b"), 100))
	rec("touch missing", nil, c.Touch(k("missing"), 100))
	it, err = c.GetAndTouch(k("b"), 100)
	rec("gat b", show(it), err)
	it, err = c.GetAndTouch(k("missing"), 100)
	rec("gat missing", show(it), err)
	rec("set expired", nil, c.Set(&memcache.Item{Key: k("e"), Value: []byte("x"), Expiration: -1}))
	get("get expired", k("e"))

	rec("delete b", nil, c.Delete(k("b")))
	rec("delete b again", nil, c.Delete(k("b")))
	get("get deleted", k("b"))
	rec("ping", nil, c.Ping())
	rec("delete all", nil, c.DeleteAll())
	rec("flush_all", nil, c.FlushAll())
	get("get a after flush_all", k("a"))
	return out
}

// TestGomemcacheSameAsMemcached runs every gomemcache call against memcached and against serve
// with the kernel path attached: each call must come back the same from both.
func TestGomemcacheSameAsMemcached(t *testing.T) {
	m := testenv.StartMemcached(t, false)
	want := gomemcacheTranscript(memcache.New(m.Addr), "gomc-")
	s := startLoServe(t, "xcgomc")
	got := gomemcacheTranscript(memcacheClientIn(s.pair.Server, s.addr.String()), "gomc-")
	if len(got) != len(want) {
		t.Fatalf("serve made %d calls, memcached %d:\nserve:\n%s\nmemcached:\n%s", len(got), len(want),
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("call %d\n serve:     %s\n memcached: %s", i, got[i], want[i])
		}
	}
	if !t.Failed() {
		t.Logf("%d calls, same replies:\n%s", len(want), strings.Join(want, "\n"))
	}
}

// TestGomemcacheWritesDropKernelCopy fills the kernel cache with a key over UDP, changes it with
// one gomemcache call over TCP, and reads it over UDP at once: every kind of write is seen, none
// served stale from the kernel.
func TestGomemcacheWritesDropKernelCopy(t *testing.T) {
	s := startLoServe(t, "xcgomk")
	mc := memcacheClientIn(s.pair.Server, s.addr.String())
	u := newUDPGetter(t, s.pair.Server, s.addr, replyWait)

	cases := []struct {
		name  string
		old   string
		write func(key string) error
		want  func(key string) string
	}{
		{"set", "old", func(k string) error { return mc.Set(&memcache.Item{Key: k, Value: []byte("new"), Flags: 9}) },
			func(k string) string { return udpWant(k, 9, "new") }},
		{"replace", "old", func(k string) error { return mc.Replace(&memcache.Item{Key: k, Value: []byte("new")}) },
			func(k string) string { return udpWant(k, 0, "new") }},
		{"append", "old", func(k string) error { return mc.Append(&memcache.Item{Key: k, Value: []byte("+a")}) },
			func(k string) string { return udpWant(k, 3, "old+a") }},
		{"prepend", "old", func(k string) error { return mc.Prepend(&memcache.Item{Key: k, Value: []byte("p+")}) },
			func(k string) string { return udpWant(k, 3, "p+old") }},
		{"cas", "old", func(k string) error {
			it, err := mc.Get(k)
			if err != nil {
				return err
			}
			it.Value = []byte("swapped")
			return mc.CompareAndSwap(it)
		}, func(k string) string { return udpWant(k, 3, "swapped") }},
		{"incr", "10", func(k string) error { _, err := mc.Increment(k, 5); return err },
			func(k string) string { return udpWant(k, 3, "15") }},
		// memcached pads a shorter decr result with spaces to the old length; so does serve.
		{"decr", "10", func(k string) error { _, err := mc.Decrement(k, 3); return err },
			func(k string) string { return udpWant(k, 3, "7 ") }},
		{"delete", "old", mc.Delete, func(k string) string { return udpWant(k, 0, "") }},
		{"touch-expired", "old", func(k string) error { return mc.Touch(k, -1) },
			func(k string) string { return udpWant(k, 0, "") }},
		{"gat-expired", "old", func(k string) error { _, err := mc.GetAndTouch(k, -1); return err },
			func(k string) string { return udpWant(k, 0, "") }},
		{"flush_all", "old", func(string) error { return mc.FlushAll() },
			func(k string) string { return udpWant(k, 0, "") }},
	}
	for _, tc := range cases {
		key := "kw-" + tc.name
		if err := mc.Set(&memcache.Item{Key: key, Value: []byte(tc.old), Flags: 3}); err != nil {
			t.Fatalf("%s: set: %v", tc.name, err)
		}
		fillAndHit(t, u, key, udpWant(key, 3, tc.old))
		if err := tc.write(key); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		reply, kernel, err := u.do("get " + key + "\r\n")
		if want := tc.want(key); err != nil || reply != want {
			t.Errorf("%s: UDP get right after the write: %q (kernel %v) %v; want %q", tc.name, reply, kernel, err, want)
		}
	}
}
