package server

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// fakeKernel is a KernelCache that keeps the items it was offered, as the XDP map would, and
// records every call.
type fakeKernel struct {
	mu          sync.Mutex
	items       map[string]KernelItem
	invalidated []string
	flushes     []time.Time
	offers      int
	stats       KernelStats
	fail        atomic.Bool
}

func newFakeKernel() *fakeKernel { return &fakeKernel{items: map[string]KernelItem{}} }

var errFake = errors.New("fake kernel failure")

func (k *fakeKernel) Invalidate(key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.items, key)
	k.invalidated = append(k.invalidated, key)
	if k.fail.Load() {
		return errFake
	}
	return nil
}

func (k *fakeKernel) Offer(it KernelItem) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	it.Value = append([]byte(nil), it.Value...)
	k.items[it.Key] = it
	k.offers++
	return nil
}

func (k *fakeKernel) Flush(deadline time.Time) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.flushes = append(k.flushes, deadline)
	if !deadline.After(time.Now()) {
		clear(k.items)
	}
	return nil
}

func (k *fakeKernel) Stats() (KernelStats, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stats, nil
}

func (k *fakeKernel) offerCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.offers
}

func (k *fakeKernel) get(key string) (KernelItem, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	it, ok := k.items[key]
	return it, ok
}

func udpReq(id uint16, payload string) []byte {
	return append(protocol.FrameHeader{RequestID: id, Total: 1}.AppendTo(nil), payload...)
}

func TestKernelOfferOnUDPHitOnly(t *testing.T) {
	k := newFakeKernel()
	s := startServer(t, Config{Kernel: k})
	c := dialText(t, s.tcpAddr)
	c.roundTrip("set a 7 100 3\r\nabc\r\nset b 0 0 1\r\nb\r\n")

	if got := c.roundTrip("get a\r\n"); got != "VALUE a 7 3\r\nabc\r\nEND\r\n" {
		t.Fatalf("tcp get: %q", got)
	}
	if _, ok := k.get("a"); ok || k.offerCount() != 0 {
		t.Fatal("a TCP get offered the item to the kernel")
	}
	out := s.HandleDatagram(udpReq(5, "get a b nokey\r\n"))
	if len(out) != 1 {
		t.Fatalf("%d datagrams, want 1", len(out))
	}
	it, ok := k.get("a")
	if !ok || string(it.Value) != "abc" || it.Flags != 7 || it.CAS == 0 || it.Expires.IsZero() ||
		time.Until(it.Expires) > 101*time.Second {
		t.Fatalf("offered %+v, %v", it, ok)
	}
	if it, ok := k.get("b"); !ok || !it.Expires.IsZero() {
		t.Fatalf("b offered %+v, %v; want no expiry", it, ok)
	}
	if _, ok := k.get("nokey"); ok {
		t.Fatal("a miss was offered")
	}
	// The offered CAS is the one gets reports: the kernel can answer gets with the same bytes.
	want := string(protocol.AppendValue(nil, "a", 7, []byte("abc"), it.CAS, true))
	if got := c.roundTrip("gets a\r\n"); got != want+protocol.End {
		t.Fatalf("gets %q, kernel item would give %q", got, want)
	}
}

func TestKernelInvalidatedBeforeReply(t *testing.T) {
	k := newFakeKernel()
	s := startServer(t, Config{Kernel: k})
	c := dialText(t, s.tcpAddr)
	mutations := []struct{ setup, req string }{
		{"", "set k 0 0 1\r\nx\r\n"},
		{"", "append k 0 0 1\r\ny\r\n"},
		{"", "prepend k 0 0 1\r\nz\r\n"},
		{"", "replace k 0 0 1\r\n1\r\n"},
		{"", "incr k 1\r\n"},
		{"", "decr k 1\r\n"},
		{"", "touch k 100\r\n"},
		{"", "gat 100 k\r\n"},
		{"", "cas k 0 0 1 {cas}\r\n5\r\n"},
		{"", "ms k 1\r\n6\r\n"},
		{"", "ma k\r\n"},
		{"", "mg k T30\r\n"},
		{"", "md k I\r\n"},
		{"", "md k\r\n"},
		{"set k 0 0 1\r\nx\r\n", "delete k\r\n"},
		{"set k 0 0 1\r\nx\r\n", "set k 0 0 2000000\r\n" + string(make([]byte, 2000000)) + "\r\n"},
	}
	for _, m := range mutations {
		if m.setup != "" {
			c.roundTrip(m.setup)
		}
		req := m.req
		if req == "cas k 0 0 1 {cas}\r\n5\r\n" {
			it, _ := s.Store().Get("k")
			req = "cas k 0 0 1 " + strconv.FormatUint(it.CAS, 10) + "\r\n5\r\n"
		}
		// Install the current value in the fake kernel as a UDP hit would.
		s.HandleDatagram(udpReq(1, "get k\r\n"))
		c.roundTrip(req)
		if it, ok := k.get("k"); ok {
			t.Errorf("after %q the kernel still serves %q", firstLine(req), it.Value)
		}
	}
}

func firstLine(s string) string {
	for i := range s {
		if s[i] == '\r' {
			return s[:i]
		}
	}
	return s
}

// TestKernelNeverServesStaleAfterAck races UDP get hits (which fill the kernel) against
// acknowledged sets of the same key: once a set is acknowledged, the kernel may hold that value
// or nothing, never an older one (docs/DESIGN.md invariant 1).
func TestKernelNeverServesStaleAfterAck(t *testing.T) {
	k := newFakeKernel()
	s := startServer(t, Config{Kernel: k})
	c := dialText(t, s.tcpAddr)
	c.roundTrip("set hot 0 0 1\r\n0\r\n")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s.HandleDatagram(udpReq(uint16(i), "get hot\r\n"))
			}
		}()
	}
	for i := 1; i <= 2000; i++ {
		v := strconv.Itoa(i)
		if got := c.roundTrip(fmt.Sprintf("set hot 0 0 %d\r\n%s\r\n", len(v), v)); got != "STORED\r\n" {
			t.Fatalf("set: %q", got)
		}
		if it, ok := k.get("hot"); ok && string(it.Value) != v {
			close(stop)
			wg.Wait()
			t.Fatalf("after set %s was acknowledged the kernel holds %s", v, it.Value)
		}
	}
	close(stop)
	wg.Wait()
	if k.offerCount() == 0 {
		t.Fatal("no fill happened: the race was not exercised")
	}
}

func TestKernelFlushAndStats(t *testing.T) {
	k := newFakeKernel()
	k.stats = KernelStats{Requests: 3, Hits: 5, BytesSent: 321, Fills: 9, FillsSkipped: 2, Evictions: 4, AdmissionsRefused: 7}
	s := startServer(t, Config{Kernel: k})
	c := dialText(t, s.tcpAddr)
	c.roundTrip("set a 0 0 1\r\nx\r\nget a nokey\r\n")
	before := time.Now()
	c.roundTrip("flush_all\r\nflush_all 10\r\n")
	k.mu.Lock()
	flushes := append([]time.Time(nil), k.flushes...)
	k.mu.Unlock()
	if len(flushes) != 2 || flushes[0].After(time.Now()) || flushes[1].Sub(before) < 9*time.Second || flushes[1].Sub(before) > 11*time.Second {
		t.Fatalf("flush deadlines %v", flushes)
	}
	st := s.Stats()
	for name, want := range map[string]string{"kernel_get_hits": "5", "kernel_requests": "3",
		"kernel_bytes_sent": "321", "kernel_fills": "9", "kernel_fills_skipped": "2", "kernel_evictions": "4",
		"kernel_admissions_refused": "7",
		"get_hits":                  "6", "get_misses": "1", "cmd_get": "7"} {
		if st[name] != want {
			t.Errorf("stat %s = %q, want %q", name, st[name], want)
		}
	}
	k.fail.Store(true)
	c.roundTrip("set a 0 0 1\r\ny\r\n")
	if st := s.Stats(); st["kernel_errors"] == "0" {
		t.Error("a failed Invalidate was not counted")
	}
}

func TestUDPRequestsCounter(t *testing.T) {
	s := startServer(t, Config{})
	for _, d := range [][]byte{
		{0, 1, 0, 0, 0, 1, 0, 0}, // header only
		{0, 1},                   // short
		append([]byte{0, 1, 0, 0, 0, 2, 0, 0}, "get a\r\n"...), // two datagrams announced
	} {
		if out := s.HandleDatagram(d); out != nil {
			t.Errorf("HandleDatagram(%q) = %q, want nothing", d, out)
		}
	}
	if got := s.Stats()["udp_requests"]; got != "0" {
		t.Fatalf("udp_requests = %s after dropped datagrams", got)
	}
	u := dialUDP(t, s.udpAddr)
	u.roundTrip("get a\r\n") // plus the sentinel
	if got := s.Stats()["udp_requests"]; got != "2" {
		t.Fatalf("udp_requests = %s, want 2", got)
	}
}
