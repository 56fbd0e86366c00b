package server

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/upstream"
)

// startUpstream is a memcached process on a fixed loopback port (TCP only), which a test can stop
// and start again on the same port.
func startUpstream(t testing.TB) *testenv.Memcached {
	return testenv.StartMemcached(t, false, "-t", "2")
}

// upstreamSetup is our server fronting two memcached processes, with a direct client to each.
type upstreamSetup struct {
	s      *testServer
	ups    []*testenv.Memcached
	direct map[string]*textClient // by address
	ring   *upstream.Ring
	addrs  []string
}

func startUpstreamSetup(t *testing.T, cfg Config) *upstreamSetup {
	t.Helper()
	u := &upstreamSetup{direct: map[string]*textClient{}}
	for range 2 {
		m := startUpstream(t)
		u.ups = append(u.ups, m)
		u.addrs = append(u.addrs, m.Addr)
		u.direct[m.Addr] = dialText(t, m.Addr)
	}
	cfg.Upstreams = u.addrs
	u.s = startServer(t, cfg)
	u.ring = upstream.NewRing(u.addrs)
	return u
}

// owner is the address of key's upstream, by the ring.
func (u *upstreamSetup) owner(key string) string { return u.ring.Addr(u.ring.Pick([]byte(key))) }

// other is the address of the upstream that does not own key.
func (u *upstreamSetup) other(key string) string {
	if u.owner(key) == u.addrs[0] {
		return u.addrs[1]
	}
	return u.addrs[0]
}

// keyOn returns a key owned by upstream i.
func (u *upstreamSetup) keyOn(t *testing.T, prefix string, i int) string {
	t.Helper()
	for n := range 1000 {
		k := fmt.Sprintf("%s%d", prefix, n)
		if u.owner(k) == u.addrs[i] {
			return k
		}
	}
	t.Fatalf("no key with prefix %s on upstream %d", prefix, i)
	return ""
}

var getsRE = regexp.MustCompile(`^VALUE (\S+) (\d+) (\d+) (\d+)\r\n`)

// casOf parses the CAS unique out of a gets reply.
func casOf(t *testing.T, reply string) string {
	t.Helper()
	m := getsRE.FindStringSubmatch(reply)
	if m == nil {
		t.Fatalf("not a gets hit: %q", reply)
	}
	return m[4]
}

// Keys written through us land on the upstream the ring picks, and only there; reads, deletes,
// incr and cas through us act on that upstream, with its CAS uniques.
func TestUpstreamPlacementAndCommands(t *testing.T) {
	u := startUpstreamSetup(t, Config{})
	c := dialText(t, u.s.tcpAddr)
	per := map[string]int{}
	for i := range 40 {
		k := fmt.Sprintf("user:%d", i)
		if got := c.roundTrip(fmt.Sprintf("set %s 5 0 2\r\nv%d\r\n", k, i%10)); got != "STORED\r\n" {
			t.Fatalf("set %s: %q", k, got)
		}
		own, oth := u.owner(k), u.other(k)
		per[own]++
		want := fmt.Sprintf("VALUE %s 5 2\r\nv%d\r\nEND\r\n", k, i%10)
		if got := u.direct[own].roundTrip("get " + k + "\r\n"); got != want {
			t.Fatalf("%s on its upstream %s: %q, want %q", k, own, got, want)
		}
		if got := u.direct[oth].roundTrip("get " + k + "\r\n"); got != "END\r\n" {
			t.Fatalf("%s also on the other upstream %s: %q", k, oth, got)
		}
		if got := c.roundTrip("get " + k + "\r\n"); got != want {
			t.Fatalf("get %s through us: %q, want %q", k, got, want)
		}
	}
	if per[u.addrs[0]] < 5 || per[u.addrs[1]] < 5 {
		t.Fatalf("keys per upstream %v: placement is lopsided", per)
	}

	// A multi-key get spanning both upstreams, with local hits and fetches, in request order.
	k0, k1 := u.keyOn(t, "m", 0), u.keyOn(t, "m", 1)
	c.roundTrip(fmt.Sprintf("set %s 0 0 1\r\na\r\nset %s 0 0 1\r\nb\r\n", k0, k1))
	c.roundTrip("get " + k1 + "\r\n") // k1 now local
	want := fmt.Sprintf("VALUE %s 0 1\r\na\r\nVALUE %s 0 1\r\nb\r\nEND\r\n", k0, k1)
	if got := c.roundTrip(fmt.Sprintf("get %s nokey %s\r\n", k0, k1)); got != want {
		t.Fatalf("multi-key get: %q, want %q", got, want)
	}

	// incr and delete land on the owner.
	c.roundTrip("set n 0 0 2\r\n10\r\n")
	if got := c.roundTrip("incr n 5\r\n"); got != "15\r\n" {
		t.Fatalf("incr: %q", got)
	}
	if got := u.direct[u.owner("n")].roundTrip("get n\r\n"); got != "VALUE n 0 2\r\n15\r\nEND\r\n" {
		t.Fatalf("after incr through us the upstream has %q", got)
	}
	if got := c.roundTrip("decr n 20\r\n"); got != "0\r\n" {
		t.Fatalf("decr: %q", got)
	}
	if got := c.roundTrip("delete n\r\n"); got != "DELETED\r\n" {
		t.Fatalf("delete: %q", got)
	}
	if got := u.direct[u.owner("n")].roundTrip("get n\r\n"); got != "END\r\n" {
		t.Fatalf("after delete through us the upstream has %q", got)
	}
	if got := c.roundTrip("delete n\r\nincr n 1\r\n"); got != "NOT_FOUND\r\nNOT_FOUND\r\n" {
		t.Fatalf("delete/incr of a missing key: %q", got)
	}

	// gets through us reports the upstream's CAS, locally cached or not, and cas with it works.
	c.roundTrip("set c 0 0 1\r\nx\r\n")
	up := casOf(t, u.direct[u.owner("c")].roundTrip("gets c\r\n"))
	if got := casOf(t, c.roundTrip("gets c\r\n")); got != up { // fetched
		t.Fatalf("gets through us: cas %s, upstream says %s", got, up)
	}
	if got := casOf(t, c.roundTrip("gets c\r\n")); got != up { // local
		t.Fatalf("gets from the local copy: cas %s, upstream says %s", got, up)
	}
	if got := c.roundTrip("cas c 0 0 1 " + up + "\r\ny\r\n"); got != "STORED\r\n" {
		t.Fatalf("cas with the upstream's unique: %q", got)
	}
	if got := c.roundTrip("cas c 0 0 1 " + up + "\r\nz\r\n"); got != "EXISTS\r\n" {
		t.Fatalf("cas with a stale unique: %q", got)
	}
	if got := c.roundTrip("get c\r\n"); got != "VALUE c 0 1\r\ny\r\nEND\r\n" {
		t.Fatalf("after cas: %q", got)
	}

	// noreply is applied to our reply; the write still happened before the next request.
	if got := c.roundTrip("set q 0 0 1 noreply\r\nq\r\nget q\r\n"); got != "VALUE q 0 1\r\nq\r\nEND\r\n" {
		t.Fatalf("set noreply then get: %q", got)
	}

	// touch and gat change the upstream's TTL.
	if got := c.roundTrip("touch q 1000\r\n"); got != "TOUCHED\r\n" {
		t.Fatalf("touch: %q", got)
	}
	if got := u.direct[u.owner("q")].roundTrip("mg q t\r\n"); !strings.HasPrefix(got, "HD t99") && !strings.HasPrefix(got, "HD t100") {
		t.Fatalf("upstream TTL after touch: %q", got)
	}
	if got := c.roundTrip("gats 2000 q nokey\r\n"); !strings.HasPrefix(got, "VALUE q 0 1 ") || !strings.HasSuffix(got, "\r\nq\r\nEND\r\n") {
		t.Fatalf("gats: %q", got)
	}
	if got := u.direct[u.owner("q")].roundTrip("mg q t\r\n"); !strings.HasPrefix(got, "HD t199") && !strings.HasPrefix(got, "HD t200") {
		t.Fatalf("upstream TTL after gats: %q", got)
	}

	st := u.s.Stats()
	if st["upstream_servers"] != "2" || st["upstream_servers_up"] != "2" || st["upstream_fills"] == "0" {
		t.Fatalf("upstream stats: %v", st)
	}
}

// A write through us is visible at once through us and at the upstream, even with the old value
// cached locally; a write made directly at the upstream shows through us within the max age.
func TestUpstreamWriteVisibility(t *testing.T) {
	const maxAge = 3 * time.Second
	u := startUpstreamSetup(t, Config{KernelMaxAge: maxAge})
	c := dialText(t, u.s.tcpAddr)
	for i := range 20 {
		v := strconv.Itoa(i)
		if got := c.roundTrip(fmt.Sprintf("set w 0 0 %d\r\n%s\r\n", len(v), v)); got != "STORED\r\n" {
			t.Fatalf("set: %q", got)
		}
		want := fmt.Sprintf("VALUE w 0 %d\r\n%s\r\nEND\r\n", len(v), v)
		for range 2 { // the first fetches and caches, the second is local
			if got := c.roundTrip("get w\r\n"); got != want {
				t.Fatalf("after set %s through us, get through us: %q", v, got)
			}
		}
		if got := u.direct[u.owner("w")].roundTrip("get w\r\n"); got != want {
			t.Fatalf("after set %s through us, the upstream has %q", v, got)
		}
	}

	// Cache "d", then change it behind our back.
	c.roundTrip("set d 0 0 3\r\nold\r\n")
	c.roundTrip("get d\r\n")
	if _, ok := u.s.Store().Get("d"); !ok {
		t.Fatal("a fetched value was not cached locally")
	}
	written := time.Now()
	u.direct[u.owner("d")].roundTrip("set d 0 0 3\r\nnew\r\n")
	// The local copy may still answer for a while (up to max age), never longer.
	for {
		got := c.roundTrip("get d\r\n")
		if got == "VALUE d 0 3\r\nnew\r\nEND\r\n" {
			break
		}
		if got != "VALUE d 0 3\r\nold\r\nEND\r\n" {
			t.Fatalf("get d: %q", got)
		}
		if time.Since(written) > maxAge+500*time.Millisecond {
			t.Fatalf("direct upstream write still not visible after %v (max age %v)", time.Since(written), maxAge)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A local copy never outlives the upstream's TTL, nor the max age.
func TestUpstreamLocalExpiry(t *testing.T) {
	u := startUpstreamSetup(t, Config{KernelMaxAge: 10 * time.Second})
	c := dialText(t, u.s.tcpAddr)
	c.roundTrip("set short 0 3 1\r\ns\r\nset long 0 1000 1\r\nl\r\nset never 0 0 1\r\nn\r\nset gone 0 1 1\r\ng\r\n")
	before := time.Now().Unix()
	c.roundTrip("get short long never gone\r\n")
	check := func(key string, maxExp int64) {
		t.Helper()
		it, ok := u.s.Store().Get(key)
		if !ok {
			t.Fatalf("%s not cached", key)
		}
		if it.Exptime == 0 || it.Exptime > maxExp {
			t.Fatalf("%s cached until %d, want at most %d", key, it.Exptime, maxExp)
		}
	}
	check("short", before+3)
	check("long", time.Now().Add(10*time.Second).Unix())
	check("never", time.Now().Add(10*time.Second).Unix())
	// One second or less left at the upstream: not worth caching.
	if _, ok := u.s.Store().Get("gone"); ok {
		t.Fatal("an item with one second left upstream was cached")
	}
}

// mg, ms, md and ma go to the key's upstream; mg hits may be answered locally with the same
// bytes; quiet mode keeps working.
func TestUpstreamMeta(t *testing.T) {
	u := startUpstreamSetup(t, Config{})
	c := dialText(t, u.s.tcpAddr)
	if got := c.roundTrip("ms mk 2 F7 T0\r\nhi\r\n"); got != "HD\r\n" {
		t.Fatalf("ms: %q", got)
	}
	d := u.direct[u.owner("mk")]
	want := d.roundTrip("mg mk v f c s k Oab\r\n")
	if !strings.HasPrefix(want, "VA 2 f7 c") {
		t.Fatalf("upstream mg: %q", want)
	}
	for i := range 2 { // fetched, then local
		if got := c.roundTrip("mg mk v f c s k Oab\r\n"); got != want {
			t.Fatalf("mg %d through us: %q, upstream says %q", i, got, want)
		}
	}
	if got := c.roundTrip("mg mk t v\r\n"); got != "VA 2 t-1\r\nhi\r\n" {
		t.Fatalf("mg with t: %q", got)
	}
	if got := c.roundTrip("mg nokey v q\r\nmg nokey v\r\n"); got != "EN\r\n" {
		t.Fatalf("mg miss, quiet then not: %q", got)
	}
	if got := c.roundTrip("ma cnt N0 J5 v\r\nma cnt q\r\nma cnt v\r\n"); got != "VA 1\r\n5\r\nVA 1\r\n7\r\n" {
		t.Fatalf("ma: %q", got)
	}
	if got := u.direct[u.owner("cnt")].roundTrip("get cnt\r\n"); got != "VALUE cnt 0 1\r\n7\r\nEND\r\n" {
		t.Fatalf("upstream after ma: %q", got)
	}
	if got := c.roundTrip("md mk q\r\nmd mk q\r\nmg mk v\r\n"); got != "NF\r\nEN\r\n" {
		t.Fatalf("md quiet: %q", got)
	}
	if got := c.roundTrip("ms mk 1 q\r\nx\r\nme mk\r\n"); !strings.HasPrefix(got, "ME mk exp=-1 ") {
		t.Fatalf("ms quiet then me: %q", got)
	}
	// A base64 key is hashed decoded, as the text key it stands for.
	if got := c.roundTrip("ms bWs= 1 b\r\ny\r\nget mk\r\n"); got != "HD\r\nVALUE mk 0 1\r\ny\r\nEND\r\n" {
		t.Fatalf("ms with a base64 key: %q", got)
	}
}

// flush_all reaches every upstream and the local copies.
func TestUpstreamFlushAll(t *testing.T) {
	u := startUpstreamSetup(t, Config{})
	c := dialText(t, u.s.tcpAddr)
	k0, k1 := u.keyOn(t, "f", 0), u.keyOn(t, "f", 1)
	c.roundTrip(fmt.Sprintf("set %s 0 0 1\r\na\r\nset %s 0 0 1\r\nb\r\nget %s %s\r\n", k0, k1, k0, k1))
	if got := c.roundTrip("flush_all\r\n"); got != "OK\r\n" {
		t.Fatalf("flush_all: %q", got)
	}
	if got := c.roundTrip(fmt.Sprintf("get %s %s\r\n", k0, k1)); got != "END\r\n" {
		t.Fatalf("after flush_all through us: %q", got)
	}
	for _, a := range u.addrs {
		if got := u.direct[a].roundTrip(fmt.Sprintf("get %s %s\r\n", k0, k1)); got != "END\r\n" {
			t.Fatalf("after flush_all upstream %s has %q", a, got)
		}
	}
}

// One upstream dies: its keys fail fast with SERVER_ERROR, the other's keep working; it comes
// back on the same port: its keys work again within a few seconds.
func TestUpstreamDownAndRecovery(t *testing.T) {
	u := startUpstreamSetup(t, Config{})
	c := dialText(t, u.s.tcpAddr)
	dead, alive := u.keyOn(t, "d", 0), u.keyOn(t, "a", 1)
	c.roundTrip(fmt.Sprintf("set %s 0 0 1\r\nx\r\nset %s 0 0 1\r\ny\r\n", dead, alive))

	u.ups[0].Stop()
	wantErr := "SERVER_ERROR upstream " + u.addrs[0] + " unavailable\r\n"
	for i := range 5 {
		start := time.Now()
		got := c.roundTrip(fmt.Sprintf("set %s 0 0 1\r\nz\r\n", dead))
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("request %d to a dead upstream took %v", i, took)
		}
		if got != wantErr {
			t.Fatalf("set on a dead upstream: %q, want %q", got, wantErr)
		}
	}
	// Down now: a read fails at once too, and so does a multi-key get that needs it.
	start := time.Now()
	if got := c.roundTrip("get " + dead + "\r\n"); got != wantErr {
		t.Fatalf("get on a dead upstream: %q", got)
	}
	if got := c.roundTrip("get " + alive + " " + dead + "\r\n"); got != wantErr {
		t.Fatalf("multi-key get with a dead upstream: %q", got)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("failing fast took %v", took)
	}
	if got := c.roundTrip("get " + alive + "\r\n"); got != "VALUE "+alive+" 0 1\r\ny\r\nEND\r\n" {
		t.Fatalf("the live upstream's key: %q", got)
	}
	if st := u.s.Stats(); st["upstream_servers_up"] != "1" {
		t.Fatalf("upstream_servers_up = %s with one dead", st["upstream_servers_up"])
	}

	u.ups[0].Start()
	restarted := time.Now()
	for {
		got := c.roundTrip(fmt.Sprintf("set %s 0 0 1\r\nw\r\n", dead))
		if got == "STORED\r\n" {
			break
		}
		if got != wantErr {
			t.Fatalf("set while recovering: %q", got)
		}
		if time.Since(restarted) > 5*time.Second {
			t.Fatalf("upstream back for %v and still unavailable", time.Since(restarted))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := c.roundTrip("get " + dead + "\r\n"); got != "VALUE "+dead+" 0 1\r\nw\r\nEND\r\n" {
		t.Fatalf("get after recovery: %q", got)
	}
}

// With a kernel cache, every forwarded write drops the kernel copy before it is acknowledged.
func TestUpstreamKernelInvalidatedBeforeAck(t *testing.T) {
	k := newFakeKernel()
	u := startUpstreamSetup(t, Config{Kernel: k, KernelMaxAge: 30 * time.Second})
	c := dialText(t, u.s.tcpAddr)
	writes := []string{
		"set k 0 0 1\r\nx\r\n",
		"append k 0 0 1\r\ny\r\n",
		"prepend k 0 0 1\r\nz\r\n",
		"replace k 0 0 1\r\n1\r\n",
		"incr k 1\r\n",
		"decr k 1\r\n",
		"touch k 100\r\n",
		"gat 100 k\r\n",
		"cas k 0 0 1 {cas}\r\n5\r\n",
		"ms k 1\r\n6\r\n",
		"ma k\r\n",
		"mg k T30 v\r\n",
		"md k I\r\n",
		"set k 0 0 1 noreply\r\n7\r\n",
		"delete k\r\n",
		"flush_all\r\n",
	}
	for _, w := range writes {
		c.roundTrip("set k 0 0 1\r\n2\r\n")
		// The first UDP get fetches and caches locally, the second is a local hit the kernel is
		// offered.
		u.s.HandleDatagram(udpReq(1, "get k\r\n"))
		u.s.HandleDatagram(udpReq(2, "get k\r\n"))
		before, ok := k.get("k")
		if !ok {
			t.Fatalf("before %q: the kernel was not offered the cached item", firstLine(w))
		}
		if strings.Contains(w, "{cas}") {
			w = strings.Replace(w, "{cas}", strconv.FormatUint(before.CAS, 10), 1)
		}
		c.roundTrip(w)
		if it, ok := k.get("k"); ok {
			t.Errorf("after %q was acknowledged the kernel still serves %q", firstLine(w), it.Value)
		}
	}
}

// Fills race writes through us: once a write is acknowledged, neither the local copy nor the
// kernel may hold an older value (docs/DESIGN.md invariant 1).
func TestUpstreamNoStaleFillAfterAck(t *testing.T) {
	k := newFakeKernel()
	u := startUpstreamSetup(t, Config{Kernel: k, KernelMaxAge: 30 * time.Second})
	c := dialText(t, u.s.tcpAddr)
	c.roundTrip("set hot 0 0 1\r\n0\r\n")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				u.s.HandleDatagram(udpReq(uint16(r*10000+i), "get hot\r\n"))
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for i := 1; i <= 500; i++ {
		v := strconv.Itoa(i)
		if got := c.roundTrip(fmt.Sprintf("set hot 0 0 %d\r\n%s\r\n", len(v), v)); got != "STORED\r\n" {
			t.Fatalf("set: %q", got)
		}
		if it, ok := k.get("hot"); ok && string(it.Value) != v {
			t.Fatalf("after set %s was acknowledged the kernel holds %s", v, it.Value)
		}
		if it, ok := u.s.Store().Get("hot"); ok && string(it.Value) != v {
			t.Fatalf("after set %s was acknowledged the local copy is %s", v, it.Value)
		}
	}
	st := u.s.Stats()
	if offers := k.offerCount(); st["upstream_fills"] == "0" || offers == 0 {
		t.Fatalf("no fill reached the store and the kernel (stats %v, offers %d): the race was not exercised", st, offers)
	}
}
