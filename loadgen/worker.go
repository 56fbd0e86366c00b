package loadgen

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/loadgen/workload"
)

// control is the run's shared clock and phase boundaries.
type control struct {
	epoch time.Time
	// measureStart is the first intended send time that is measured (ns since epoch); requests
	// intended earlier are warmup. MaxInt64 until the warmup ends.
	measureStart atomic.Int64
	// stopAt is the end of the window: nothing intended at or after it is sent.
	stopAt    atomic.Int64
	stopCh    chan struct{}
	timeoutNs int64
	// kernelTOS is the DSCP mark shifted into the TOS byte's upper six bits; -1 when unmarked.
	kernelTOS int
	metrics   *runMetrics
}

func newControl(cfg *Config) *control {
	c := &control{epoch: time.Now(), stopCh: make(chan struct{}), timeoutNs: int64(cfg.Timeout), kernelTOS: -1}
	c.measureStart.Store(math.MaxInt64)
	c.stopAt.Store(math.MaxInt64)
	if cfg.KernelDSCP > 0 {
		c.kernelTOS = cfg.KernelDSCP << 2
	}
	return c
}

func (c *control) now() int64 { return int64(time.Since(c.epoch)) }

func (c *control) inWindow(intended int64) bool {
	return intended >= c.measureStart.Load() && intended < c.stopAt.Load()
}

// transport is one socket or connection with its sending and receiving halves. send is called by
// the worker's sender goroutine only, receive runs in the worker's receiver goroutine; the others
// may be called from the controller.
type transport interface {
	// send registers ops as outstanding and sends them; now is the actual send time.
	send(ops []op, now int64) error
	// receive reads replies, matches them and records them until the socket is closed.
	receive() error
	// outstanding is the number of requests awaiting a reply.
	outstanding() int
	// poll lets the sender handle replies already queued (UDP); it never blocks.
	poll()
	// expireAll counts every outstanding request as timed out.
	expireAll()
	close() error
}

// worker is one socket's sender, receiver and accounts.
type worker struct {
	ctl     *control
	gen     opGen
	tr      transport
	batch   int
	singleP bool              // GOMAXPROCS is 1: sender and receiver share the only P
	poisson *workload.Poisson // nil in closed loop
	tokens  chan struct{}     // closed loop: one token per allowed outstanding request

	cnt counters
	// Measured-window accounts. meas is owned by the receiver; the atomics are shared because the
	// sender (send errors) and the controller (final expiry) count too.
	meas             *measurement
	measuredTimeouts atomic.Uint64
	measuredErrors   atomic.Uint64
	// Sender-owned: schedule keeping in the window.
	lag     *hdrhistogram.Histogram
	offered uint64
	unsent  uint64
	lagMax  atomic.Int64 // largest lag since the controller last read it, for progress
}

// complete accounts one answered request; called by the receiver.
func (w *worker) complete(c Class, intended, now int64) {
	w.cnt.done[c].Add(1)
	lat := now - intended
	if w.ctl.inWindow(intended) {
		w.meas.record(c, lat)
	}
	if m := w.ctl.metrics; m != nil {
		m.observe(c, lat)
	}
	w.release()
}

// fail accounts a request answered with an error or a malformed reply.
func (w *worker) fail(intended int64) {
	w.cnt.errors.Add(1)
	if w.ctl.inWindow(intended) {
		w.measuredErrors.Add(1)
	}
	if m := w.ctl.metrics; m != nil {
		m.errors.Inc()
	}
	w.release()
}

// timeout accounts a request that got no reply in time.
func (w *worker) timeout(intended int64) {
	w.cnt.timeouts.Add(1)
	if w.ctl.inWindow(intended) {
		w.measuredTimeouts.Add(1)
	}
	if m := w.ctl.metrics; m != nil {
		m.timeouts.Inc()
	}
	w.release()
}

func (w *worker) release() {
	if w.tokens == nil {
		return
	}
	select {
	case w.tokens <- struct{}{}:
	default:
	}
}

// runSender sends on the open-loop schedule or, in closed loop, whenever a token is free.
func (w *worker) runSender() error {
	if w.poisson != nil {
		return w.runOpen()
	}
	return w.runClosed()
}

func (w *worker) runOpen() error {
	ops := make([]op, 0, w.batch)
	// Without a warmup the schedule starts with the window, however late this goroutine runs.
	start := w.ctl.now()
	if ms := w.ctl.measureStart.Load(); ms != math.MaxInt64 {
		start = ms
	}
	next := float64(start) + w.poisson.NextGapNs(w.gen.r)
	for {
		now := w.ctl.now()
		stop := w.ctl.stopAt.Load()
		if now >= stop {
			w.countUnsent(next, stop)
			return nil
		}
		ops = ops[:0]
		for len(ops) < cap(ops) && int64(next) <= now {
			ops = append(ops, w.gen.next(int64(next)))
			next += w.poisson.NextGapNs(w.gen.r)
		}
		if len(ops) == 0 {
			w.waitUntil(int64(next))
			continue
		}
		if err := w.tr.send(ops, now); err != nil {
			return err
		}
		w.cnt.sent.Add(uint64(len(ops)))
		if len(ops) == cap(ops) || w.singleP {
			// Behind, at full speed, or sharing one P with the receiver: take the replies
			// queued so far. Yielding instead costs a trip through the scheduler per batch and
			// halved the single-core ceiling (BenchmarkCeiling).
			w.tr.poll()
		}
		ms := w.ctl.measureStart.Load()
		for i := range ops {
			lag := now - ops[i].intended
			if ops[i].intended >= ms && ops[i].intended < stop {
				w.offered++
				_ = w.lag.RecordValue(max(lag, histLowest))
			}
			if lag > w.lagMax.Load() {
				w.lagMax.Store(lag)
			}
		}
	}
}

// countUnsent counts the arrivals of the window the sender had not sent when the window closed:
// the schedule it could not keep.
func (w *worker) countUnsent(next float64, stop int64) {
	ms := w.ctl.measureStart.Load()
	for int64(next) < stop {
		if int64(next) >= ms {
			w.unsent++
		}
		next += w.poisson.NextGapNs(w.gen.r)
	}
}

// waitUntil returns at t or soon after, or early when the run stops.
func (w *worker) waitUntil(t int64) {
	const (
		spinBelow = 15 * time.Microsecond // about how late a nanosleep with 1 ns slack wakes
		maxChunk  = 10 * time.Millisecond // notice a stop within this
	)
	for {
		now := w.ctl.now()
		d := time.Duration(t - now)
		if d <= 0 || now >= w.ctl.stopAt.Load() {
			return
		}
		switch {
		case d > 2*spinBelow:
			// Go's timers fire up to a millisecond late, so the thread sleeps in the kernel,
			// with a 1 ns timer slack (the default 50 µs would be added to every wake-up). The
			// goroutine is not locked to a thread: a locked one pays a thread handoff at each
			// reschedule, which stalled the sender on a busy machine; so the slack is set on
			// whichever thread sleeps. Waking a little early and spinning the rest trades a few
			// µs of CPU per request for precision; spinning whole gaps would starve the server
			// on a small machine.
			_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0) // best effort: only precision suffers
			ts := unix.NsecToTimespec(int64(min(d-spinBelow, maxChunk)))
			_ = unix.Nanosleep(&ts, nil) // EINTR only shortens the sleep
		default:
			// Spin without yielding: the wait is under 2*spinBelow, and preemption keeps the
			// scheduler fair. With a single P the receiver cannot run meanwhile, so take its
			// replies here.
			if w.singleP {
				w.tr.poll()
			}
		}
	}
}

func (w *worker) runClosed() error {
	ops := make([]op, 0, w.batch)
	for {
		select {
		case <-w.tokens:
		case <-w.ctl.stopCh:
			return nil
		}
		n := 1
	drain:
		for n < w.batch {
			select {
			case <-w.tokens:
				n++
			default:
				break drain
			}
		}
		now := w.ctl.now()
		if now >= w.ctl.stopAt.Load() {
			return nil
		}
		ops = ops[:0]
		for range n {
			ops = append(ops, w.gen.next(now))
		}
		if err := w.tr.send(ops, now); err != nil {
			return err
		}
		w.cnt.sent.Add(uint64(n))
		if w.singleP {
			w.tr.poll()
		}
		if w.ctl.inWindow(now) {
			w.offered += uint64(n)
		}
	}
}
