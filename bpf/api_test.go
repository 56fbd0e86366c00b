package bpf

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

func TestFrequencyAdmissionKeepsHotKeys(t *testing.T) {
	// Pure userspace: the sketch alone.
	s := newFrequencySketch(64)
	if s.admit(keyHash("once")) {
		t.Fatal("a key offered once was admitted")
	}
	if !s.admit(keyHash("once")) {
		t.Fatal("a key offered twice was not admitted")
	}
	for i := 0; i < 200; i++ {
		if s.admit(keyHash(fmt.Sprintf("scan-%d", i))) {
			t.Fatalf("one-off key %d admitted", i)
		}
	}
}

func TestFrequencyAdmissionInKernel(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 8, Admission: AdmitFrequency})
	for i := 0; i < 8; i++ {
		k := fmt.Sprintf("hot%d", i)
		for j := 0; j < 2; j++ {
			if err := c.Offer(item(k, "v", 0, 1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, _ := c.Len(); n != 8 {
		t.Fatalf("%d hot keys installed, want 8", n)
	}
	for i := 0; i < 8; i++ {
		if v, _ := run(t, c.Program(), request(keysCommand("get", fmt.Sprintf("hot%d", i))).Bytes()); v != xdpTX {
			t.Fatalf("hot%d not served", i)
		}
	}
	// A scan of one-off keys must not displace them.
	for i := 0; i < 500; i++ {
		if err := c.Offer(item(fmt.Sprintf("cold%d", i), "v", 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 8; i++ {
		if v, _ := run(t, c.Program(), request(keysCommand("get", fmt.Sprintf("hot%d", i))).Bytes()); v != xdpTX {
			t.Fatalf("hot%d evicted by a scan of one-off keys", i)
		}
	}
}

func TestClockEvictionPrefersUnreferenced(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 4})
	for i := 0; i < 4; i++ {
		offer(t, c, item(fmt.Sprintf("k%d", i), "v", 0, 1))
	}
	// k0..k2 are read in the kernel (their referenced bit is set), k3 is not.
	for i := 0; i < 3; i++ {
		if v, _ := run(t, c.Program(), request(keysCommand("get", fmt.Sprintf("k%d", i))).Bytes()); v != xdpTX {
			t.Fatalf("k%d not served", i)
		}
	}
	offer(t, c, item("new", "v", 0, 1))
	if n, _ := c.Len(); n != 4 {
		t.Fatalf("%d entries, want the limit 4", n)
	}
	if v, _ := run(t, c.Program(), request(keysCommand("get", "k3")).Bytes()); v != xdpPass {
		t.Fatal("the unreferenced entry k3 survived; a referenced one was evicted")
	}
	for _, k := range []string{"k0", "k1", "k2", "new"} {
		if v, _ := run(t, c.Program(), request(keysCommand("get", k)).Bytes()); v != xdpTX {
			t.Fatalf("%s not served after eviction", k)
		}
	}
}

func TestByteBudget(t *testing.T) {
	per := int64(classCaps[0] + entryHdrBytes + overheadBytes)
	c := newTestCache(t, Options{MaxEntries: 100, MaxBytes: 3 * per})
	for i := 0; i < 10; i++ {
		offer(t, c, item(fmt.Sprintf("k%d", i), "v", 0, 1))
		if _, used := c.Len(); used > 3*per {
			t.Fatalf("%d bytes charged, over the %d budget", used, 3*per)
		}
	}
	if n, _ := c.Len(); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
}

func TestOfferIgnoresUnservable(t *testing.T) {
	c := newTestCache(t, Options{})
	for _, it := range []struct{ key, value string }{
		{"", "v"},
		{strings.Repeat("k", 251), "v"},
		{"sp ace", "v"},
		{"cr\rlf", "v"},
		{"nl\n", "v"},
		{"big", strings.Repeat("x", 1400)},
		{"huge", strings.Repeat("x", 1<<20)}, // rejected before it is encoded
	} {
		if err := c.Offer(item(it.key, it.value, 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := c.Len(); n != 0 {
		t.Fatalf("%d unservable items installed", n)
	}
}

func TestCollectorAndStats(t *testing.T) {
	c := newTestCache(t, Options{})
	if err := c.EnableRunStats(); err != nil {
		t.Fatal(err)
	}
	offer(t, c, item("k", "value", 0, 1))
	run(t, c.Program(), request(keysCommand("get", "k", "k")).Bytes())
	run(t, c.Program(), request(keysCommand("get", "nope")).Bytes())
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(len(reply(0, testStoreOne(), false, "k", "k")))
	if st.Requests != 1 || st.Hits != 2 || st.BytesSent != want || st.Fills != 1 || st.Evictions != 0 {
		t.Fatalf("Stats %+v, want 1 request, 2 hits, %d bytes, 1 fill, no eviction", st, want)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c.Collector()); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"xdpcache_kernel_hits_total":     2,
		"xdpcache_kernel_requests_total": 1,
	} {
		if got := gather(t, reg, name, ""); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := gather(t, reg, "xdpcache_kernel_passes_total", "miss"); got != 1 {
		t.Errorf("passes{reason=miss} = %v, want 1", got)
	}
	// Churn: the one fill, nothing evicted or refused.
	if got := gather(t, reg, "xdpcache_kernel_fills_total", ""); got != 1 {
		t.Errorf("fills = %v, want 1", got)
	}
	for _, reason := range []string{"space", "index"} {
		if got := gather(t, reg, "xdpcache_kernel_evictions_total", reason); got != 0 {
			t.Errorf("evictions{reason=%s} = %v, want 0", reason, got)
		}
	}
	if got := gather(t, reg, "xdpcache_kernel_admissions_refused_total", "victim"); got != 0 {
		t.Errorf("admissions_refused{reason=victim} = %v, want 0", got)
	}
	if got := gather(t, reg, "xdpcache_kernel_program_runs_total", ""); got < 2 {
		t.Errorf("program runs = %v with stats enabled, want >= 2", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "xdpcache_kernel_passes_total" && len(mf.GetMetric()) != len(passReasons) {
			t.Errorf("%d pass reason series, want %d", len(mf.GetMetric()), len(passReasons))
		}
	}
	for i := xdpcacheCounterPASS_NOT_IP_UDP; i <= xdpcacheCounterPASS_TO_TC; i++ {
		if passReasons[i] == "" {
			t.Errorf("counter %d has no reason label", i)
		}
	}
}

func gather(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != reason) {
				continue
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s{%s} not gathered", name, reason)
	return 0
}

// TestAttach attaches to lo inside a namespace of its own: the host's lo may carry another
// test's program (go test runs packages in parallel) or a real deployment's.
func TestAttach(t *testing.T) {
	testenv.RequireRoot(t)
	ns, err := netns.NewIsolated("xcbpf")
	if err != nil {
		t.Fatalf("private namespace: %v", err)
	}
	defer ns.Close()
	c := newTestCache(t, Options{})
	other := newTestCache(t, Options{})
	err = ns.Do(func() error {
		if _, err := c.Attach("no-such-if0", ModeAuto); !errors.Is(err, ErrNoInterface) {
			return fmt.Errorf("missing interface: err %v, want ErrNoInterface", err)
		}
		if got := attachedMetric(t, c); got != "iface= mode= 0" {
			return fmt.Errorf("before attach: xdpcache_kernel_attached %s", got)
		}
		m, err := c.Attach("lo", ModeGeneric)
		if err != nil {
			return fmt.Errorf("attach generic to lo: %w", err)
		}
		if m != ModeGeneric {
			return fmt.Errorf("mode %q", m)
		}
		if got := attachedMetric(t, c); got != "iface=lo mode=generic 1" {
			return fmt.Errorf("attached: xdpcache_kernel_attached %s", got)
		}
		if _, err := c.Attach("lo", ModeGeneric); !errors.Is(err, ErrAttached) {
			return fmt.Errorf("second attach: err %v, want ErrAttached", err)
		}
		// Another program on the same hook is refused with a cause the operator can act on.
		if _, err := other.Attach("lo", ModeGeneric); !errors.Is(err, ErrBusy) {
			return fmt.Errorf("attach over an attached program: err %v, want ErrBusy", err)
		}
		if err := c.Close(); err != nil {
			return err
		}
		if iface, mode := c.Attached(); iface != "" || mode != "" {
			return fmt.Errorf("closed cache reports attached to %q in %q", iface, mode)
		}
		// Closing detached it: the other cache can attach now.
		if _, err := other.Attach("lo", ModeGeneric); err != nil {
			return fmt.Errorf("attach after Close: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoadPassAndEcho(t *testing.T) {
	testenv.RequireRoot(t)
	pass, err := LoadPass()
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	req := request(keysCommand("get", "k"))
	if v, _ := run(t, pass, req.Bytes()); v != xdpPass {
		t.Fatalf("pass program: verdict %d", v)
	}
	echo, err := LoadEcho(11211)
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	v, out := run(t, echo, req.Bytes())
	if v != xdpTX {
		t.Fatalf("echo: verdict %d", v)
	}
	checkReply(t, req, out, req.Payload)
	other := request(keysCommand("get", "k"))
	other.DstPort = 53
	if v, _ := run(t, echo, other.Bytes()); v != xdpPass {
		t.Fatalf("echo to another port: verdict %d", v)
	}
}

// TestTakeFetchedReportsKernelHits: TakeFetched names each key the program served since the last
// call, once, and nothing for keys it only passed (misses) or did not see.
func TestTakeFetchedReportsKernelHits(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 16})
	for _, k := range []string{"a", "b", "c"} {
		offer(t, c, item(k, "v", 0, 1))
	}
	take := func() []string {
		var got []string
		c.TakeFetched(func(k string) { got = append(got, k) })
		slices.Sort(got)
		return got
	}
	if got := take(); len(got) != 0 {
		t.Fatalf("fetched %v before any request", got)
	}
	for _, req := range []string{"get a", "get a", "get b c", "get zz"} {
		run(t, c.Program(), request(req+"\r\n").Bytes())
	}
	if got := take(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("fetched %v, want [a b c]", got)
	}
	if got := take(); len(got) != 0 {
		t.Fatalf("fetched %v again with no request in between", got)
	}
	run(t, c.Program(), request("get b\r\n").Bytes())
	if got := take(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("fetched %v, want [b]", got)
	}
}

// attachedMetric renders the collector's xdpcache_kernel_attached sample as "iface=I mode=M V".
func attachedMetric(t *testing.T, c *Cache) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "xdpcache_kernel_attached" {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("%d xdpcache_kernel_attached samples, want 1", len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		return fmt.Sprintf("iface=%s mode=%s %g", labels["iface"], labels["mode"], m.GetGauge().GetValue())
	}
	t.Fatal("no xdpcache_kernel_attached family")
	return ""
}

// TestTakeFetchedAcrossChunks: with more entries than one hold of the lock examines, one call
// still reports every served key once.
func TestTakeFetchedAcrossChunks(t *testing.T) {
	const n = 2*fetchedChunk + 100
	c := newTestCache(t, Options{MaxEntries: 4 * fetchedChunk, MaxBytes: 64 << 20})
	for i := range n {
		offer(t, c, item(fmt.Sprintf("k%d", i), "v", 0, 1))
	}
	// A few keys find both their index slots taken and are not cached: only served keys count.
	served := map[string]bool{}
	for i := range n {
		k := fmt.Sprintf("k%d", i)
		if v, _ := run(t, c.Program(), request(keysCommand("get", k)).Bytes()); v == xdpTX {
			served[k] = true
		}
	}
	if len(served) < n*95/100 {
		t.Fatalf("only %d of %d keys served", len(served), n)
	}
	seen := map[string]int{}
	c.TakeFetched(func(k string) { seen[k]++ })
	for k, times := range seen {
		if times != 1 || !served[k] {
			t.Fatalf("%s reported %d times (served: %v)", k, times, served[k])
		}
	}
	if len(seen) != len(served) {
		t.Fatalf("%d keys reported, %d served", len(seen), len(served))
	}
}

// TestFrequencyAdmissionComparesWithVictim: in a full cache a new key displaces the eviction
// victim only if it was offered more often (TinyLFU); with "always" it displaces it regardless.
func TestFrequencyAdmissionComparesWithVictim(t *testing.T) {
	served := func(c *Cache, key string) bool {
		v, _ := run(t, c.Program(), request(keysCommand("get", key)).Bytes())
		return v == xdpTX
	}
	for _, tc := range []struct {
		policy  string
		offers  int  // offers of the newcomer
		install bool // whether it gets in
	}{
		{AdmitFrequency, 2, false}, // admitted by the threshold, but the residents were offered 5 times
		{AdmitFrequency, 8, true},
		{AdmitAlways, 1, true},
	} {
		c := newTestCache(t, Options{MaxEntries: 4, Admission: tc.policy})
		for i := range 4 {
			for range 5 {
				if err := c.Offer(item(fmt.Sprintf("resident%d", i), "v", 0, 1)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n, _ := c.Len(); n != 4 {
			t.Fatalf("%s: %d residents, want 4", tc.policy, n)
		}
		for range tc.offers {
			if err := c.Offer(item("newcomer", "v", 0, 1)); err != nil {
				t.Fatal(err)
			}
		}
		if got := served(c, "newcomer"); got != tc.install {
			t.Errorf("%s, newcomer offered %d times: served %v, want %v", tc.policy, tc.offers, got, tc.install)
		}
		residents := 0
		for i := range 4 {
			if served(c, fmt.Sprintf("resident%d", i)) {
				residents++
			}
		}
		if want := 4 - btoi(tc.install); residents != want {
			t.Errorf("%s: %d residents served, want %d", tc.policy, residents, want)
		}
		// The churn counters say the same: one eviction for room if the newcomer got in, a
		// refusal against the victim if it passed the threshold but did not.
		ch := c.Churn()
		want := Churn{Fills: 4 + uint64(btoi(tc.install)), EvictedSpace: uint64(btoi(tc.install))}
		if tc.policy == AdmitFrequency {
			want.RefusedFrequency = ch.RefusedFrequency // first offers, below the threshold
			if ch.RefusedFrequency == 0 {
				t.Errorf("%s: no offer refused for frequency", tc.policy)
			}
			// Offers past the threshold but not yet past the victim's count.
			want.RefusedVictim = ch.RefusedVictim
			if ch.RefusedVictim == 0 {
				t.Errorf("%s: no offer refused against the victim", tc.policy)
			}
		}
		if ch != want {
			t.Errorf("%s, newcomer offered %d times: churn %+v, want %+v", tc.policy, tc.offers, ch, want)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestIndexMovesBeforeEvicting: filled to its entry limit, the cache keeps nearly every key.
// A key whose two index slots are both taken moves one occupant to that occupant's other slot
// rather than evicting it (how many keys it keeps: docs/BENCHMARKS.md section 2).
func TestIndexMovesBeforeEvicting(t *testing.T) {
	const n = 8192
	c := newTestCache(t, Options{MaxEntries: n, MaxBytes: 64 << 20})
	for i := range n {
		offer(t, c, item(fmt.Sprintf("key:%d", i), "v", 0, 1))
	}
	entries, _ := c.Len()
	served := 0
	for i := range n {
		if v, _ := run(t, c.Program(), request(keysCommand("get", fmt.Sprintf("key:%d", i))).Bytes()); v == xdpTX {
			served++
		}
	}
	if served != entries {
		t.Fatalf("%d keys served, %d entries recorded", served, entries)
	}
	t.Logf("%d of %d keys kept", entries, n)
	if entries < n*995/1000 {
		t.Fatalf("only %d of %d keys kept at the entry limit", entries, n)
	}
	// Below the entry limit, every key lost was evicted from the index, and is counted so.
	if ch := c.Churn(); ch.Moved == 0 || ch != (Churn{Fills: n, EvictedIndex: uint64(n - entries), Moved: ch.Moved}) {
		t.Fatalf("churn %+v for %d fills and %d entries kept", ch, n, entries)
	}
	// A moved entry leaves no copy behind: once invalidated, no key is answered.
	for i := range n {
		key := fmt.Sprintf("key:%d", i)
		if err := c.Invalidate(key); err != nil {
			t.Fatal(err)
		}
		if v, _ := run(t, c.Program(), request(keysCommand("get", key)).Bytes()); v != xdpPass {
			t.Fatalf("%s answered after Invalidate (verdict %d)", key, v)
		}
	}
}

// TestFillsSkippedWhileRetiring: with retirement long, a small cache that keeps replacing its
// keys runs out of free chunks (evicted entries keep theirs until retired) and skips fills. It
// evicts nothing for a fill it then cannot make (it used to, losing an entry each time), and the
// churn counters say what happened.
func TestFillsSkippedWhileRetiring(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 4, MaxBytes: 64 << 20, Admission: AdmitAlways})
	c.mu.Lock()
	c.retireAfter = time.Hour
	c.mu.Unlock()
	const offers = 2000
	value := strings.Repeat("v", 1200) // the largest chunks: fewest to a page
	for i := range offers {
		if err := c.Offer(item(fmt.Sprintf("r%d", i), value, 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	ch := c.Churn()
	if ch.FillsSkipped == 0 || ch.Fills+ch.FillsSkipped != offers || ch.EvictedSpace+ch.EvictedIndex != ch.Fills-4 {
		t.Fatalf("churn %+v for %d offers into a 4-entry cache", ch, offers)
	}
	if n, _ := c.Len(); n != 4 {
		t.Fatalf("%d entries, want 4", n)
	}
	t.Logf("churn %+v", ch)
}
