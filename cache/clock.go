package cache

import (
	"sync/atomic"
	"time"
)

// wallClock is the store's clock unless Config.Now sets one: the wall clock, read through the
// monotonic clock against a wall reading at most a second old. time.Now reads both clocks; this
// reads one, which is most of what a read of the store saves. A step of the wall clock
// (settimeofday, an NTP step) shows within a second; NTP's slewing shows at once, as it slews the
// monotonic clock too. memcached keeps its time from a monotonic clock ticked once a second.
type wallClock struct{ base atomic.Pointer[clockBase] }

type clockBase struct {
	wall time.Time     // a time.Now reading
	at   time.Duration // its monotonic offset from clockStart
}

var clockStart = time.Now()

// resyncEvery is how old the wall reading may get.
const resyncEvery = time.Second

func (c *wallClock) Now() time.Time {
	d := time.Since(clockStart) // the monotonic clock alone
	b := c.base.Load()
	if b == nil || d-b.at >= resyncEvery {
		w := time.Now()
		c.base.Store(&clockBase{wall: w, at: w.Sub(clockStart)})
		return w
	}
	return b.wall.Add(d - b.at)
}
