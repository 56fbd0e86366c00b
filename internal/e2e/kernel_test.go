package e2e

import (
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// TestKernelAnswersAndWritesWin is the kernel path's end-to-end proof: over a real veth pair, a UDP client
// gets correct replies; once the key is in the kernel cache the replies carry the kernel's mark, the
// kernel hit counter rises and the server's UDP request counter does not; then a TCP set changes the
// value and the very next UDP GET returns the new value.
// userspaceReply is the Go server's own reply to a one-datagram request, without the network.
func userspaceReply(t *testing.T, r *rig, payload string) string {
	t.Helper()
	req := protocol.FrameHeader{RequestID: 1, Total: 1}.AppendTo(nil)
	var out string
	for _, d := range r.srv.HandleDatagram(append(req, payload...)) {
		out += string(d[protocol.FrameHeaderLen:])
	}
	return out
}

func TestKernelAnswersAndWritesWin(t *testing.T) {
	r := newRig(t, "always")
	mc := r.memcacheClient()
	u := r.udpGetter(t, replyWait)

	if err := mc.Set(&memcache.Item{Key: "greeting", Value: []byte("hello"), Flags: 7}); err != nil {
		t.Fatalf("TCP set: %v", err)
	}
	const want1 = "VALUE greeting 7 5\r\nhello\r\nEND\r\n"

	// The first GET reaches the server, which answers and fills the kernel cache.
	reply, kernel, err := u.do("get greeting\r\n")
	if err != nil || reply != want1 || kernel {
		t.Fatalf("first get: %q kernel %v err %v; want %q from userspace", reply, kernel, err, want1)
	}

	udpBefore, hitsBefore := r.stat(t, "udp_requests"), r.kernelHits(t)
	const n = 20
	for i := 0; i < n; i++ {
		reply, kernel, err := u.do("get greeting\r\n")
		if err != nil || reply != want1 {
			t.Fatalf("get %d: %q err %v; want %q", i, reply, err, want1)
		}
		if !kernel {
			t.Fatalf("get %d answered without the kernel mark", i)
		}
	}
	if got := r.kernelHits(t) - hitsBefore; got != n {
		t.Errorf("kernel hits rose by %d, want %d", got, n)
	}
	if got := r.stat(t, "udp_requests") - udpBefore; got != 0 {
		t.Errorf("server saw %d UDP requests that the kernel should have answered", got)
	}

	// gets is answered by the kernel too, with the CAS unique where the server puts it: the kernel's
	// reply must equal the server's own reply to the same request.
	reply, kernel, err = u.do("gets greeting\r\n")
	if err != nil || !kernel {
		t.Fatalf("gets: %q kernel %v err %v; want a kernel reply", reply, kernel, err)
	}
	if want := userspaceReply(t, r, "gets greeting\r\n"); reply != want {
		t.Fatalf("kernel gets reply %q, server's %q", reply, want)
	}

	// A write over TCP is acknowledged only after the kernel copy is gone.
	if err := mc.Set(&memcache.Item{Key: "greeting", Value: []byte("bonjour"), Flags: 7}); err != nil {
		t.Fatalf("TCP set: %v", err)
	}
	const want2 = "VALUE greeting 7 7\r\nbonjour\r\nEND\r\n"
	reply, kernel, err = u.do("get greeting\r\n")
	if err != nil || reply != want2 {
		t.Fatalf("get after set: %q (kernel %v) err %v; want %q", reply, kernel, err, want2)
	}
	// The new value is refilled and served by the kernel again.
	reply, kernel, err = u.do("get greeting\r\n")
	if err != nil || reply != want2 || !kernel {
		t.Fatalf("get after refill: %q kernel %v err %v; want %q from the kernel", reply, kernel, err, want2)
	}

	// Delete and flush_all over TCP: the kernel must stop answering at once.
	if err := mc.Delete("greeting"); err != nil {
		t.Fatalf("TCP delete: %v", err)
	}
	if reply, _, err = u.do("get greeting\r\n"); err != nil || reply != "END\r\n" {
		t.Fatalf("get after delete: %q %v; want a miss", reply, err)
	}

	// flush_all empties the kernel cache: fill it again, flush over TCP, and the next GET misses.
	if err := mc.Set(&memcache.Item{Key: "greeting", Value: []byte("hi")}); err != nil {
		t.Fatalf("TCP set: %v", err)
	}
	for i := 0; i < 2; i++ { // the first fills, the second must come from the kernel
		reply, kernel, err = u.do("get greeting\r\n")
	}
	if err != nil || !kernel {
		t.Fatalf("refill before flush: %q kernel %v err %v", reply, kernel, err)
	}
	if err := mc.FlushAll(); err != nil {
		t.Fatalf("TCP flush_all: %v", err)
	}
	if reply, _, err = u.do("get greeting\r\n"); err != nil || reply != "END\r\n" {
		t.Fatalf("get after flush_all: %q %v; want a miss", reply, err)
	}
}
