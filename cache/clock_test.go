package cache

import (
	"testing"
	"time"
)

// TestCoarseClock: the clock follows the wall clock, never more than a few ticks behind, and
// moves.
func TestCoarseClock(t *testing.T) {
	startClock()
	first := coarseNow()
	for range 5 {
		lag := time.Since(coarseNow())
		if lag < -clockTick || lag > 20*clockTick { // generous: a loaded machine delays ticks
			t.Fatalf("clock %v behind time.Now", lag)
		}
		time.Sleep(3 * clockTick)
	}
	if !coarseNow().After(first) {
		t.Fatalf("clock stuck at %v", first)
	}
}
