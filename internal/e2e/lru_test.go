package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestServeKernelHitsKeepHotKeysInStore runs serve -m 4 and keeps a key hot through the kernel
// path only, while small sets push several times the memory limit through the store. Eviction is
// per size class, as in memcached, so the fill uses the hot key's class. The serve process's
// maintenance pass records the kernel's fetches in the store once a second, so the hot key stays
// at the front of its class's LRU and survives; a key written at the same time and never read is
// evicted, which shows the pressure was there.
func TestServeKernelHitsKeepHotKeysInStore(t *testing.T) {
	r := newBareRig(t)
	r.startServe(t, "-m", "4")
	tc := r.dialText(t)
	g := r.udpGetter(t, 300*time.Millisecond)
	for _, k := range []string{"hot", "cold"} {
		if got, err := tc.line(fmt.Sprintf("set %s 0 0 5\r\nvalue\r\n", k)); err != nil || got != "STORED" {
			t.Fatalf("set %s: %q %v", k, got, err)
		}
	}
	// The first UDP get is a userspace hit, which fills the kernel cache.
	if got, _, err := g.do("get hot\r\n"); err != nil || got != "VALUE hot 0 5\r\nvalue\r\nEND\r\n" {
		t.Fatalf("first udp get: %q %v", got, err)
	}
	kernelHits := 0
	// At least 5 s (several maintenance passes) and until the store has evicted enough to show
	// the pressure: on a busy machine fewer sets fit in 5 s. Bounded at 30 s.
	start := time.Now()
	pressured := func() bool { return tc.stat(t, "evictions") >= 40 }
	for i := 0; time.Since(start) < 30*time.Second; i++ {
		if time.Since(start) >= 5*time.Second && i%10 == 0 && pressured() {
			break
		}
		// 2000 items of the hot key's class (96-byte chunks, 43688 in -m 4) per pass, up to 20
		// passes a second: the store turns over in ~2 s, twice the maintenance interval.
		var fill strings.Builder
		for j := range 2000 {
			fmt.Fprintf(&fill, "set fill:%d:%d 0 0 5 noreply\r\nvalue\r\n", i, j)
		}
		if got, err := tc.line(fill.String() + "mn\r\n"); err != nil || got != "MN" {
			t.Fatalf("fill pass %d: %q %v", i, got, err)
		}
		if got, kernel, err := g.do("get hot\r\n"); err == nil && got == "VALUE hot 0 5\r\nvalue\r\nEND\r\n" && kernel {
			kernelHits++
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ev := tc.stat(t, "evictions"); ev < 40 {
		t.Fatalf("%d evictions: the store was not under pressure", ev)
	}
	if kernelHits < 10 {
		t.Fatalf("%d kernel hits on the hot key: the kernel path did not answer it", kernelHits)
	}
	if got, err := tc.line("get cold\r\n"); err != nil || got != "END" {
		t.Fatalf("get cold: %q %v, want a miss (evicted)", got, err)
	}
	if got, err := tc.line("get hot\r\n"); err != nil || got != "VALUE hot 0 5" {
		t.Fatalf("get hot: %q %v: the key the kernel kept serving was evicted from the store", got, err)
	}
}
