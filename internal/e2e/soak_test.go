package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// TestSoak runs minutes of mixed load through both paths and fails on any error, any
// linearizability violation, or growth in memory or goroutines. Skipped unless XDPCACHE_SOAK=1;
// XDPCACHE_SOAK_DURATION sets the length (default 5m). docs/SECURITY.md says what a good run
// looks like.
//
// Each round flushes everything, records a 50 K-operation history on 8 keys (as
// TestLinearizable) and checks it, while a background load of UDP gets and TCP sets on 10 000
// other keys, values of 1 to 1200 bytes, checks that every value read is whole and its own key's.
func TestSoak(t *testing.T) {
	if os.Getenv("XDPCACHE_SOAK") != "1" {
		t.Skip("soak test: set XDPCACHE_SOAK=1 (and XDPCACHE_SOAK_DURATION, default 5m)")
	}
	dur := 5 * time.Minute
	if v := os.Getenv("XDPCACHE_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("XDPCACHE_SOAK_DURATION=%q: %v", v, err)
		}
		dur = d
	}
	r := newRig(t, "always")
	ctl := r.dialText(t)

	stop := make(chan struct{})
	var bg sync.WaitGroup
	var bgOps, bgKernel, bgLost atomic.Int64
	bgErr := make(chan error, 4)
	for w := 0; w < 2; w++ {
		tc := r.dialText(t)
		g := r.udpGetter(t, 250*time.Millisecond)
		bg.Add(1)
		go func(w int) {
			defer bg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := "soak:" + strconv.Itoa(rng.IntN(10_000))
				if rng.IntN(4) == 0 {
					v := soakValue(k, 1+rng.IntN(1200))
					if got, err := tc.line(fmt.Sprintf("set %s 0 0 %d\r\n%s\r\n", k, len(v), v)); err != nil || got != "STORED" {
						bgErr <- fmt.Errorf("background set %s: %q %v", k, got, err)
						return
					}
				} else {
					reply, kernel, err := g.do("get " + k + "\r\n")
					if err == errUDPTimeout {
						bgLost.Add(1)
						continue
					}
					if err != nil {
						bgErr <- fmt.Errorf("background get %s: %w", k, err)
						return
					}
					res, err := parseGetReply(reply, []string{k})
					if err != nil {
						bgErr <- err
						return
					}
					if res[0].found && res[0].value != soakValue(k, len(res[0].value)) {
						bgErr <- fmt.Errorf("get %s (kernel %v): torn or foreign value %q", k, kernel, res[0].value)
						return
					}
					if kernel {
						bgKernel.Add(1)
					}
				}
				bgOps.Add(1)
			}
		}(w)
	}
	defer func() {
		close(stop)
		bg.Wait()
	}()

	type sample struct {
		heap       uint64
		goroutines int
	}
	var samples []sample
	end := time.Now().Add(dur)
	var total, kernelReads, lost int
	for round := 0; time.Now().Before(end); round++ {
		if got, err := ctl.line("flush_all\r\n"); err != nil || got != "OK" {
			t.Fatalf("round %d: flush_all: %q %v", round, got, err)
		}
		h, st := recordHistory(t, r, 50_000, time.Minute)
		if res := checkHistory(t, h); res != porcupine.Ok {
			t.Fatalf("round %d: history of %d operations is %s", round, len(h), res)
		}
		total, kernelReads, lost = total+st.ops, kernelReads+st.kernelReads, lost+st.udpTimeouts
		select {
		case err := <-bgErr:
			t.Fatalf("round %d: %v", round, err)
		default:
		}
		// The round's client connections are closed; wait for their server goroutines to end.
		for deadline := time.Now().Add(5 * time.Second); r.stat(t, "curr_connections") != 3; {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d connections open, want 3", round, r.stat(t, "curr_connections"))
			}
			time.Sleep(10 * time.Millisecond)
		}
		samples = append(samples, sample{heap: heapInuse(), goroutines: runtime.NumGoroutine()})
		t.Logf("round %d: %d ops checked, heap %d MiB, %d goroutines, background %d ops (%d kernel, %d lost)",
			round, len(h), samples[len(samples)-1].heap>>20, samples[len(samples)-1].goroutines,
			bgOps.Load(), bgKernel.Load(), bgLost.Load())
	}
	if len(samples) < 4 {
		t.Fatalf("only %d rounds in %v: too short to judge growth", len(samples), dur)
	}
	// Steady state: after the first quarter (the store and kernel cache fill), the heap may move
	// with GC timing but not trend up; goroutines do not change at all between rounds.
	q := len(samples) / 4
	var early uint64
	for _, s := range samples[q : 2*q] {
		early = max(early, s.heap)
	}
	for i, s := range samples[3*q:] {
		if s.heap > early+early/2+(8<<20) {
			t.Errorf("heap grew: %d MiB in round %d against at most %d MiB early on", s.heap>>20, 3*q+i, early>>20)
		}
	}
	for i, s := range samples[1:] {
		if s.goroutines != samples[0].goroutines {
			t.Errorf("goroutines %d in round %d, %d in round 0", s.goroutines, i+1, samples[0].goroutines)
		}
	}
	reqs := bgOps.Load() + int64(total)
	if l := bgLost.Load() + int64(lost); l*10_000 > reqs {
		t.Errorf("%d of %d UDP requests lost: over 0.01%%", l, reqs)
	}
	t.Logf("soak %v: %d checked ops (%d kernel reads), %d background ops (%d kernel), %d lost",
		dur, total, kernelReads, bgOps.Load(), bgKernel.Load(), lost+int(bgLost.Load()))
}

// soakValue is key's value of length n: the key repeated, so a value torn or served for another
// key does not match.
func soakValue(key string, n int) string {
	return strings.Repeat(key+"|", n/(len(key)+1)+1)[:n]
}
