package bpf

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/kernelcache"
)

// Invariant 7, "not a reflector": the allow-list, the per-source rate and the amplification cap,
// over Program.Run.

func fromSource(req packet.UDP, src netip.Addr) packet.UDP {
	req.Src = src
	return req
}

// runPass asserts that frame passes unchanged and returns the counter deltas.
func runPass(t *testing.T, c *Cache, frame []byte) [xdpcacheCounterCNT_MAX]uint64 {
	t.Helper()
	in := bytes.Clone(frame)
	return counterDelta(t, c, func() {
		v, out := run(t, c.Program(), frame)
		if v != xdpPass || !bytes.Equal(out, in) {
			t.Fatalf("verdict %d, packet changed %v; want XDP_PASS unchanged", v, !bytes.Equal(out, in))
		}
	})
}

func TestAllowList(t *testing.T) {
	c := newTestCache(t, Options{AllowSources: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00::/64"),
	}})
	offer(t, c, item("k", "value", 0, 1))
	want := reply(0x1234, testStoreOne(), false, "k")
	for _, src := range []string{"10.0.0.1", "10.0.0.255", "fd00::1", "fd00::ffff:1"} {
		a := netip.MustParseAddr(src)
		req := request(keysCommand("get", "k"))
		if a.Is6() {
			req = request6(keysCommand("get", "k"))
		}
		req = fromSource(req, a)
		v, out := run(t, c.Program(), req.Bytes())
		if v != xdpTX {
			t.Fatalf("allowed source %v: verdict %d, want XDP_TX", a, v)
		}
		checkReply(t, req, out, want)
	}
	// Spoofed sources outside the list, loopback included (an explicit list is exactly that
	// list, as in the server): passed untouched, counted, whatever the key.
	for _, src := range []string{"10.0.1.1", "192.0.2.7", "0.0.0.0", "255.255.255.255", "fd00:0:0:1::1", "2001:db8::1", "127.0.0.1", "127.9.9.9", "::1"} {
		a := netip.MustParseAddr(src)
		req := request(keysCommand("get", "k"))
		if a.Is6() {
			req = request6(keysCommand("get", "k"))
		}
		req = fromSource(req, a)
		for i := 0; i < 2; i++ { // the second time from the program's verdict cache
			d := runPass(t, c, req.Bytes())
			if d[xdpcacheCounterPASS_NOT_ALLOWED] != 1 || d[xdpcacheCounterCNT_REQUESTS] != 0 {
				t.Fatalf("source %v: counters %v, want one not_allowed pass", a, d)
			}
		}
	}
	// An IPv6 packet from an IPv4-mapped address must not pass for the IPv4 client 10.0.0.1.
	mapped := request6(keysCommand("get", "k")).Bytes()
	m := netip.MustParseAddr("::ffff:10.0.0.1").As16()
	copy(mapped[14+8:], m[:])
	if d := runPass(t, c, mapped); d[xdpcacheCounterPASS_NOT_ALLOWED] != 1 {
		t.Fatalf("IPv4-mapped IPv6 source: counters %v, want one not_allowed pass", d)
	}
	// Widening the list takes effect at once, cached verdicts notwithstanding.
	spoofed := fromSource(request(keysCommand("get", "k")), netip.MustParseAddr("192.0.2.7"))
	if err := c.allow([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/28")}); err != nil {
		t.Fatal(err)
	}
	if v, _ := run(t, c.Program(), spoofed.Bytes()); v != xdpTX {
		t.Fatalf("source allowed after a change: verdict %d", v)
	}
}

func TestAllowListEmptyAndDefault(t *testing.T) {
	c := newTestCache(t, Options{AllowSources: []netip.Prefix{}})
	offer(t, c, item("k", "value", 0, 1))
	for _, src := range []string{"10.0.0.1", "127.0.0.1"} {
		req := fromSource(request(keysCommand("get", "k")), netip.MustParseAddr(src))
		if d := runPass(t, c, req.Bytes()); d[xdpcacheCounterPASS_NOT_ALLOWED] != 1 {
			t.Fatalf("empty list, source %s: counters %v, want a not_allowed pass", src, d)
		}
	}
	// No list: loopback (and, once attached, the interface's subnets).
	d, err := New(Options{MaxEntries: 64, MaxBytes: 1 << 20, Admission: AdmitAlways})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	offer(t, d, item("k", "value", 0, 1))
	for _, src := range []string{"127.0.0.1", "127.1.2.3", "::1"} {
		a := netip.MustParseAddr(src)
		req := request(keysCommand("get", "k"))
		if a.Is6() {
			req = request6(keysCommand("get", "k"))
		}
		req = fromSource(req, a)
		if v, _ := run(t, d.Program(), req.Bytes()); v != xdpTX {
			t.Fatalf("default list, loopback %v: verdict %d, want XDP_TX", a, v)
		}
	}
	if dd := runPass(t, d, request(keysCommand("get", "k")).Bytes()); dd[xdpcacheCounterPASS_NOT_ALLOWED] != 1 {
		t.Fatalf("default list, 10.0.0.1 unattached: counters %v, want a not_allowed pass", dd)
	}
}

// TestRateLimitBurst: a rate so low that no token comes back during the test, so exactly Burst
// requests of a flood are answered per source, and the rest pass to the server.
func TestRateLimitBurst(t *testing.T) {
	const burst = 5
	c := newTestCache(t, Options{RatePerSource: 0.001, Burst: burst,
		AllowSources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}})
	offer(t, c, item("k", "value", 0, 1))
	for _, src := range []string{"10.0.0.1", "10.0.0.2", "fd00::1"} {
		a := netip.MustParseAddr(src)
		req := request(keysCommand("get", "k"))
		if a.Is6() {
			req = request6(keysCommand("get", "k"))
		}
		req = fromSource(req, a)
		answered := 0
		d := counterDelta(t, c, func() {
			for i := 0; i < 4*burst; i++ {
				frame := req.Bytes()
				v, out := run(t, c.Program(), frame)
				switch v {
				case xdpTX:
					answered++
					checkReply(t, req, out, reply(0x1234, testStoreOne(), false, "k"))
				case xdpPass:
					if !bytes.Equal(out, frame) {
						t.Fatalf("rate-limited request changed")
					}
				default:
					t.Fatalf("verdict %d", v)
				}
			}
		})
		if answered != burst || d[xdpcacheCounterPASS_RATE_LIMITED] != 3*burst {
			t.Fatalf("source %v: %d of %d answered, counters %v; want %d answered and %d rate_limited",
				a, answered, 4*burst, d, burst, 3*burst)
		}
	}
}

// TestRateLimitRefills: at 200 replies/s with a burst of 1, a second request at once is refused
// and one 20 ms later (four intervals) is answered.
func TestRateLimitRefills(t *testing.T) {
	c := newTestCache(t, Options{RatePerSource: 200, Burst: 1})
	offer(t, c, item("k", "value", 0, 1))
	req := request(keysCommand("get", "k"))
	if v, _ := run(t, c.Program(), req.Bytes()); v != xdpTX {
		t.Fatalf("first request: verdict %d", v)
	}
	if d := runPass(t, c, req.Bytes()); d[xdpcacheCounterPASS_RATE_LIMITED] != 1 {
		t.Fatalf("counters %v: want one rate_limited pass", d)
	}
	time.Sleep(20 * time.Millisecond)
	if v, _ := run(t, c.Program(), req.Bytes()); v != xdpTX {
		t.Fatalf("after the interval: verdict %d", v)
	}
}

func TestAmplificationCap(t *testing.T) {
	c := newTestCache(t, Options{MaxAmplification: 10})
	store := map[string]kernelcache.Item{
		"small": item("small", "v", 0, 1),
		"big":   item("big", strings.Repeat("b", 300), 0, 2),
	}
	fill(t, c, store)
	// "get small": 8 + 12 request bytes, 8 + 21 + 5 reply bytes: 1.7x.
	req := request(keysCommand("get", "small"))
	v, out := run(t, c.Program(), req.Bytes())
	if v != xdpTX {
		t.Fatalf("small reply: verdict %d", v)
	}
	p := checkReply(t, req, out, reply(0x1234, store, false, "small"))
	if r := float64(len(p.Payload)) / float64(len(req.Payload)); r > 10 {
		t.Fatalf("reply %.1fx its request, over the cap", r)
	}
	// "get big": 18 request bytes, 332 reply bytes: 18x, over the cap of 10.
	if d := runPass(t, c, request(keysCommand("get", "big")).Bytes()); d[xdpcacheCounterPASS_AMPLIFICATION] != 1 {
		t.Fatalf("counters %v: want one amplification pass", d)
	}
	// The same value to a request that names it alongside enough other bytes is fine.
	many := request(keysCommand("get", "big", "small", "small", "small", "small", "small"))
	if v, _ := run(t, c.Program(), many.Bytes()); v != xdpTX {
		t.Fatalf("multi-get within the cap: verdict %d", v)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{MaxAmplification: 0.5},
		{MaxAmplification: -1},
		{RatePerSource: -1},
		{Burst: -1},
		{AllowSources: []netip.Prefix{{}}},
	} {
		if err := o.setDefaults(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	o := Options{RatePerSource: 2.5}
	if err := o.setDefaults(); err != nil || o.Burst != 2 || o.MaxAmplification != DefaultMaxAmplification {
		t.Fatalf("defaults %+v, %v", o, err)
	}
}
