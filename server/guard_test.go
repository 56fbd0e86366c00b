package server

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// guardClient is a UDP socket bound to a chosen loopback source address.
type guardClient struct {
	t    *testing.T
	conn *net.UDPConn
	id   uint16
	buf  []byte
}

func dialUDPFrom(t *testing.T, src, dst string) *guardClient {
	t.Helper()
	ra, err := net.ResolveUDPAddr("udp", dst)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, ra)
	if err != nil {
		t.Fatalf("dial udp from %s: %v", src, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &guardClient{t: t, conn: conn, buf: make([]byte, 65536)}
}

// ask sends one request and returns the reply datagrams' total size and payload, or ok=false if
// nothing came within wait.
func (g *guardClient) ask(payload string, wait time.Duration) (reply string, size int, ok bool) {
	g.t.Helper()
	g.id++
	d := protocol.FrameHeader{RequestID: g.id, Total: 1}.AppendTo(nil)
	if _, err := g.conn.Write(append(d, payload...)); err != nil {
		g.t.Fatalf("send: %v", err)
	}
	_ = g.conn.SetReadDeadline(time.Now().Add(wait))
	total, seen := -1, 0
	for total < 0 || seen < total {
		n, err := g.conn.Read(g.buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return reply, size, false
			}
			g.t.Fatalf("read: %v", err)
		}
		h, err := protocol.ParseFrameHeader(g.buf[:n])
		if err != nil {
			g.t.Fatalf("reply: %v", err)
		}
		if h.RequestID != g.id {
			continue
		}
		total = int(h.Total)
		seen++
		size += n
		reply += string(g.buf[protocol.FrameHeaderLen:n])
	}
	return reply, size, true
}

func TestGuardConfig(t *testing.T) {
	for _, cfg := range []Config{
		{RatePerSource: -1},
		{Burst: -1},
		{RatePerSource: 1e-6},
		{RatePerSource: 1, Burst: 1 << 30},
		{MaxAmplification: -2},
		{MaxAmplification: 0.5},
		{AllowSources: []netip.Prefix{{}}},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrGuardConfig) {
			t.Errorf("New(%+v) = %v, want ErrGuardConfig", cfg, err)
		}
	}
}

// A source outside the allow-list gets no reply and is counted; an allowed one on the same socket
// is answered. 127.0.0.2 stands for a forged or foreign source: every 127/8 address is local.
func TestGuardAllowList(t *testing.T) {
	ts := startServer(t, Config{AllowSources: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	good := dialUDPFrom(t, "127.0.0.1", ts.udpAddr)
	bad := dialUDPFrom(t, "127.0.0.2", ts.udpAddr)
	if reply, _, ok := good.ask("version\r\n", 2*time.Second); !ok || !strings.HasPrefix(reply, "VERSION ") {
		t.Fatalf("allowed source: %q ok=%v", reply, ok)
	}
	const n = 5
	for i := 0; i < n; i++ {
		if reply, _, ok := bad.ask("version\r\n", 100*time.Millisecond); ok {
			t.Fatalf("source outside the allow-list answered: %q", reply)
		}
	}
	if got := ts.Refused()["source"]; got != n {
		t.Errorf("refused[source] = %d, want %d", got, n)
	}
	if got := ts.st.udpRequests.Load(); got != 1 {
		t.Errorf("udp_requests = %d: refused datagrams must not reach the protocol", got)
	}
	// An empty, non-nil list answers no one.
	none := startServer(t, Config{AllowSources: []netip.Prefix{}})
	if reply, _, ok := dialUDPFrom(t, "127.0.0.1", none.udpAddr).ask("version\r\n", 200*time.Millisecond); ok {
		t.Fatalf("empty allow-list answered %q", reply)
	}
}

// The default allow-list is loopback and the socket's own subnets.
func TestGuardDefaultAllowList(t *testing.T) {
	g, err := newGuard(Config{})
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	allow := g.allowFor(uc)
	for _, a := range []string{"127.0.0.1", "127.9.9.9", "::1"} {
		if !containsAddr(allow, netip.MustParseAddr(a)) {
			t.Errorf("default allow-list %v lacks %s", allow, a)
		}
	}
	for _, a := range []string{"192.0.2.1", "8.8.8.8", "2001:db8::1"} {
		if containsAddr(allow, netip.MustParseAddr(a)) {
			t.Errorf("default allow-list %v for a loopback socket admits %s", allow, a)
		}
	}
	// The configured list replaces the default.
	g, _ = newGuard(Config{AllowSources: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")}})
	if allow := g.allowFor(uc); len(allow) != 1 || allow[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("configured allow-list came out as %v", allow)
	}
}

// A burst past the rate: the bucket's worth is answered, the rest refused, and another source
// keeps its own bucket.
func TestGuardRate(t *testing.T) {
	const burst = 10
	// 0.1/s: the refused requests' waits add up to seconds, which must not earn a token.
	ts := startServer(t, Config{RatePerSource: 0.1, Burst: burst})
	a := dialUDPFrom(t, "127.0.0.1", ts.udpAddr)
	b := dialUDPFrom(t, "127.0.0.2", ts.udpAddr)
	answered := 0
	const n = 40
	for i := 0; i < n; i++ {
		// The burst is answered: wait for it as long as a busy machine may take. The rest are
		// refused, and each refusal costs its whole wait.
		wait := 50 * time.Millisecond
		if i < burst {
			wait = 2 * time.Second
		}
		if _, _, ok := a.ask("version\r\n", wait); ok {
			answered++
		}
	}
	if answered < burst || answered > burst+1 {
		t.Fatalf("%d of %d requests answered at 0.1/s with burst %d", answered, n, burst)
	}
	if got := ts.Refused()["rate"]; got != uint64(n-answered) {
		t.Errorf("refused[rate] = %d, want %d", got, n-answered)
	}
	if _, _, ok := b.ask("version\r\n", 2*time.Second); !ok {
		t.Fatal("a second source was refused: buckets are per source")
	}
}

// The token bucket with a synthetic clock, and the collision rule of the fixed table.
func TestGuardBucket(t *testing.T) {
	g, err := newGuard(Config{RatePerSource: 100, Burst: 3})
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("192.0.2.7")
	var now int64 = 1e18
	for i := 0; i < 3; i++ {
		if !g.take(src, now) {
			t.Fatalf("take %d within the burst refused", i)
		}
	}
	if g.take(src, now) {
		t.Fatal("fourth take in the same instant allowed")
	}
	if g.take(src, now+9e6) { // 9 ms: 0.9 token at 100/s
		t.Fatal("allowed before a whole token was earned")
	}
	if !g.take(src, now+10e6) {
		t.Fatal("refused after a token was earned")
	}

	// Find a source that lands in src's slot.
	slot := g.slot
	var other netip.Addr
	for i := 0; i < 1<<24 && !other.IsValid(); i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if slot(a) == slot(src) {
			other = a
		}
	}
	if !other.IsValid() {
		t.Fatal("no colliding address found")
	}
	// src's bucket is empty: the newcomer is charged to it, so a forger cannot refill a victim's
	// bucket by sending from a colliding address.
	if g.take(other, now+10e6) {
		t.Fatal("a colliding source got a fresh bucket while the holder's was empty")
	}
	// Once the holder's bucket is full again (idle for the burst's time), the newcomer takes over.
	later := now + 10e6 + 31e6
	if !g.take(other, later) {
		t.Fatal("a colliding source refused after the holder went idle")
	}
	if b := g.buckets[slot(other)]; b.src != other {
		t.Fatalf("slot holds %v, want %v", b.src, other)
	}
}

// Every reply the server sends is within the amplification cap; one over it is replaced by a short
// SERVER_ERROR in one datagram with the request's ID, itself within the cap, and counted.
func TestGuardAmplification(t *testing.T) {
	const maxAmp = 10
	ts := startServer(t, Config{MaxAmplification: maxAmp,
		AllowSources: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	tc := dialText(t, ts.tcpAddr)
	tc.roundTrip("set small 0 0 5\r\nhello\r\n")
	tc.roundTrip("set big 0 0 1000\r\n" + strings.Repeat("x", 1000) + "\r\n")
	u := dialUDPFrom(t, "127.0.0.1", ts.udpAddr)
	for _, req := range []string{"get small\r\n", "gets small\r\n", "get small small small\r\n", "version\r\n", "get nothere\r\n"} {
		reply, size, ok := u.ask(req, 2*time.Second)
		if !ok {
			t.Fatalf("%q: no reply", req)
		}
		reqSize := protocol.FrameHeaderLen + len(req)
		if float64(size) > maxAmp*float64(reqSize) {
			t.Fatalf("%q: %d reply bytes for %d request bytes, over the cap %d: %q", req, size, reqSize, maxAmp, reply)
		}
	}
	const want = "SERVER_ERROR object too large for UDP, use TCP\r\n"
	reply, size, ok := u.ask("get big\r\n", 2*time.Second)
	if !ok || reply != want {
		t.Fatalf("get big over UDP: %q (ok %v), want %q", reply, ok, want)
	}
	if reqSize := protocol.FrameHeaderLen + len("get big\r\n"); size != protocol.FrameHeaderLen+len(want) || float64(size) > maxAmp*float64(reqSize) {
		t.Errorf("the error is %d bytes for a %d-byte request: want one %d-byte datagram within the cap",
			size, reqSize, protocol.FrameHeaderLen+len(want))
	}
	// Several requests in one datagram: one error message for all of them.
	if reply, _, ok := u.ask("get small\r\nget big\r\n", 2*time.Second); !ok || reply != want {
		t.Fatalf("two gets over the cap: %q (ok %v), want %q", reply, ok, want)
	}
	if got := ts.Refused()["amplification"]; got != 2 {
		t.Errorf("refused[amplification] = %d, want 2", got)
	}
	if got := ts.RefusalsAnswered()["amplification"]; got != 2 {
		t.Errorf("answered[amplification] = %d, want 2", got)
	}
	// A source outside the allow-list gets nothing, over the cap or not: answering it would
	// reflect at whoever it claims to be.
	if reply, _, ok := dialUDPFrom(t, "127.0.0.2", ts.udpAddr).ask("get big\r\n", 200*time.Millisecond); ok {
		t.Fatalf("a source outside the allow-list was answered: %q", reply)
	}
	if got := ts.RefusalsAnswered()["amplification"]; got != 2 {
		t.Errorf("answered[amplification] = %d after a refused source, want 2", got)
	}
	// Over TCP there is no source to forge: the same get is answered.
	if got := tc.roundTrip("get big\r\n"); !strings.HasPrefix(got, "VALUE big 0 1000\r\n") {
		t.Errorf("TCP get big: %s", quote(got))
	}
}

// When even the error would be over the cap, the request gets no reply at all.
func TestGuardAmplificationErrorOverCap(t *testing.T) {
	ts := startServer(t, Config{MaxAmplification: 1})
	dialText(t, ts.tcpAddr).roundTrip("set k 0 0 100\r\n" + strings.Repeat("x", 100) + "\r\n")
	u := dialUDPFrom(t, "127.0.0.1", ts.udpAddr)
	if reply, _, ok := u.ask("get k\r\n", 200*time.Millisecond); ok {
		t.Fatalf("a 15-byte request with cap 1 was answered: %q", reply)
	}
	if got, answered := ts.Refused()["amplification"], ts.RefusalsAnswered()["amplification"]; got != 1 || answered != 0 {
		t.Errorf("refused %d, answered %d; want 1, 0", got, answered)
	}
}

func TestGuardMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	ts := startServer(t, Config{Registry: reg, MaxAmplification: 3,
		AllowSources: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	dialUDPFrom(t, "127.0.0.2", ts.udpAddr).ask("version\r\n", 100*time.Millisecond)
	dialText(t, ts.tcpAddr).roundTrip("set k 0 0 100\r\n" + strings.Repeat("x", 100) + "\r\n")
	if reply, _, ok := dialUDPFrom(t, "127.0.0.1", ts.udpAddr).ask("get k k k k k\r\n", 2*time.Second); !ok || !strings.HasPrefix(reply, "SERVER_ERROR ") {
		t.Fatalf("get over the cap: %q (ok %v), want a SERVER_ERROR", reply, ok)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]float64{}
	for _, mf := range mfs {
		name := mf.GetName()
		if name != "xdpcache_udp_refused_total" && name != "xdpcache_udp_refusals_answered_total" {
			continue
		}
		got[name] = map[string]float64{}
		for _, m := range mf.GetMetric() {
			got[name][m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	want := map[string]map[string]float64{
		"xdpcache_udp_refused_total":           {"source": 1, "rate": 0, "amplification": 1},
		"xdpcache_udp_refusals_answered_total": {"amplification": 1},
	}
	for name, w := range want {
		if len(got[name]) != len(w) {
			t.Errorf("%s = %v, want %v", name, got[name], w)
			continue
		}
		for k, v := range w {
			if got[name][k] != v {
				t.Errorf("%s{reason=%q} = %v, want %v", name, k, got[name][k], v)
			}
		}
	}
}
