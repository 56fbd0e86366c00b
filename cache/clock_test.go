package cache

import (
	"testing"
	"time"
)

func near(a, b time.Time) bool { return a.Sub(b).Abs() < 100*time.Millisecond }

// TestWallClock: the clock follows time.Now, trusts a wall reading for up to resyncEvery, and
// takes a new one after that, so a step of the wall clock shows within resyncEvery.
func TestWallClock(t *testing.T) {
	var c wallClock
	if got := c.Now(); !near(got, time.Now()) {
		t.Fatalf("first reading %v, time.Now %v", got, time.Now())
	}
	prev := c.Now()
	for range 1000 {
		now := c.Now()
		if now.Before(prev) {
			t.Fatalf("went back from %v to %v", prev, now)
		}
		prev = now
	}
	// A wall reading an hour off (as after a step of the wall clock), taken just now: trusted.
	stepped := time.Now().Add(-time.Hour)
	c.base.Store(&clockBase{wall: stepped, at: time.Since(clockStart)})
	if got := c.Now(); !near(got, stepped) {
		t.Fatalf("reading %v, want about %v while the base is fresh", got, stepped)
	}
	// The same reading taken resyncEvery ago: replaced by a new one.
	c.base.Store(&clockBase{wall: stepped, at: time.Since(clockStart) - resyncEvery})
	if got := c.Now(); !near(got, time.Now()) {
		t.Fatalf("reading %v after the base aged, time.Now %v", got, time.Now())
	}
}
