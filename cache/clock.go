package cache

import (
	"sync"
	"sync/atomic"
	"time"
)

// The stores' clock, unless Config.Now sets one: the wall clock as one value for the process,
// refreshed every clockTick by a goroutine that starts with the first store and lives as long as
// the process, as memcached keeps its current_time from a timer. A store operation loads it
// instead of reading a clock, which on a virtual machine costs more than the rest of a read. The
// store's time is thus up to a tick (more while the process waits for a CPU) behind the wall
// clock: expiry and access times are in seconds, and a delayed flush_all's deadline moves by as
// much.
var clock struct {
	start sync.Once
	nanos atomic.Int64 // unix nanoseconds at the last tick
}

// clockTick is the clock's resolution; a tick costs the idle process a wake-up.
const clockTick = 10 * time.Millisecond

// startClock starts the clock's goroutine on first use.
func startClock() {
	clock.start.Do(func() {
		clock.nanos.Store(time.Now().UnixNano())
		go tickClock()
	})
}

// tickClock refreshes the clock forever.
func tickClock() {
	t := time.NewTicker(clockTick)
	for range t.C {
		clock.nanos.Store(time.Now().UnixNano())
	}
}

// coarseNow is the clock's time.
func coarseNow() time.Time { return time.Unix(0, clock.nanos.Load()) }
