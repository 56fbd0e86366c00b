package e2e

import (
	"strings"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/server"
)

// TestOverCapAnsweredWithError: with the XDP program attached and a low amplification cap on both
// paths, a UDP get whose reply is over the cap gets the server's short SERVER_ERROR, never
// silence. When the kernel holds the key it passes the request up for the cap (its amplification
// pass counter rises) and the server's answer serves it; a reply within the cap still comes from
// the kernel.
func TestOverCapAnsweredWithError(t *testing.T) {
	const maxAmp = 5 // "get m\r\n" with its frame header is 15 bytes: replies up to 75 bytes
	r := newRigWith(t, "always", func(o *bpf.Options, c *server.Config) {
		o.MaxAmplification = maxAmp
		c.MaxAmplification = maxAmp
	})
	mc := r.memcacheClient()
	u := r.udpGetter(t, replyWait)
	for key, size := range map[string]int{"s": 10, "m": 100, "d": 1000} {
		if err := mc.Set(&memcache.Item{Key: key, Value: []byte(strings.Repeat("v", size))}); err != nil {
			t.Fatalf("TCP set %s: %v", key, err)
		}
	}

	// Within the cap: the first get fills the kernel cache, the second is the kernel's.
	want := "VALUE s 0 10\r\n" + strings.Repeat("v", 10) + "\r\nEND\r\n"
	for i, fromKernel := range []bool{false, true} {
		reply, kernel, err := u.do("get s\r\n")
		if err != nil || reply != want || kernel != fromKernel {
			t.Fatalf("get s #%d: %q kernel %v err %v; want %q, kernel %v", i, reply, kernel, err, want, fromKernel)
		}
	}

	const tooLarge = "SERVER_ERROR object too large for UDP, use TCP\r\n"
	passes := func() uint64 {
		p, err := r.kernel.PassCounts()
		if err != nil {
			t.Fatalf("kernel pass counters: %v", err)
		}
		return p["amplification"]
	}
	for _, key := range []string{"m", "d"} {
		before := passes()
		// The first get finds the key only in the server, which answers with the error and
		// offers the key to the kernel; the second finds it in the kernel, over the cap.
		for i := 0; i < 2; i++ {
			reply, kernel, err := u.do("get " + key + "\r\n")
			if err != nil || reply != tooLarge || kernel {
				t.Fatalf("get %s #%d: %q kernel %v err %v; want %q from the server", key, i, reply, kernel, err, tooLarge)
			}
		}
		if key == "m" && passes()-before != 1 {
			// The 100-byte value fits every kernel path, so the cap is the kernel's only reason to
			// pass. The 1000-byte one may pass earlier as too_big where the frame cannot grow.
			t.Errorf("kernel amplification passes rose by %d for get %s, want 1", passes()-before, key)
		}
	}
	if got := r.srv.RefusalsAnswered()["amplification"]; got != 4 {
		t.Errorf("server answered %d over-cap requests with the error, want 4", got)
	}
	// TCP has no cap: the value is there.
	it, err := mc.Get("d")
	if err != nil {
		t.Fatalf("TCP get d: %v", err)
	}
	if len(it.Value) != 1000 {
		t.Fatalf("TCP get d: %d bytes, want 1000", len(it.Value))
	}
}
