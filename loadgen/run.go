package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/xdpcache/xdpcache/loadgen/workload"
)

// Run loads the key space (unless cfg.NoLoad), warms up, measures for cfg.Duration and returns
// the report. Progress goes to progress once a second (nil: none).
//
// Every socket is opened from the calling goroutine before any other goroutine starts, so a
// caller locked into a network namespace gets its sockets there.
//
// When ctx is cancelled, Run stops sending, waits briefly for replies in flight, and returns what
// was measured so far with Report.Interrupted set and a nil error.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	cfg.fillDefaults()
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano()) // reported, so the run can be repeated
	}
	model, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if progress == nil {
		progress = io.Discard
	}
	dial := cfg.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}

	// Open everything first (see the package comment on network namespaces).
	s, err := openSockets(ctx, &cfg, dial)
	if err != nil {
		return nil, err
	}
	defer s.closeAll()

	val := newValueSource(model.sizes.Max())
	rep := newReport(cfg)

	if !cfg.NoLoad {
		if err := populate(ctx, s.load, model, val, cfg.Seed, progress); err != nil {
			if ctx.Err() != nil {
				rep.Interrupted = true
				rep.finish(nil, 0)
				return rep, nil
			}
			return nil, err
		}
		if cfg.Proto == "udp" {
			s.closeLoad()
		}
	}

	ctl := newControl(&cfg)
	workers, err := newWorkers(&cfg, model, ctl, s, val)
	if err != nil {
		return nil, err
	}
	if s.metrics != nil {
		ctl.metrics = newRunMetrics(func() float64 {
			var n uint64
			for _, w := range workers {
				n += w.cnt.sent.Load()
			}
			return float64(n)
		})
		stopMetrics := ctl.metrics.serve(s.metrics)
		s.metrics = nil // owned by the server now
		defer func() { _ = stopMetrics() }()
	}

	if cfg.Warmup == 0 && cfg.WarmupSettle <= 0 {
		// No warmup: the window and the schedule start now, before any sender runs.
		ctl.measureStart.Store(ctl.now())
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(workers))
	for _, w := range workers {
		wg.Add(2)
		go func() { defer wg.Done(); errs <- w.tr.receive() }()
		go func() { defer wg.Done(); errs <- w.runSender() }()
	}

	window, runErr := drive(ctx, &cfg, ctl, workers, errs, progress)
	rep.Interrupted = ctx.Err() != nil

	// Let replies in flight arrive, then give up on the rest.
	drainUntil := time.Now().Add(cfg.Timeout)
	for time.Now().Before(drainUntil) && outstanding(workers) > 0 && runErr == nil {
		if rep.Interrupted {
			// An impatient user gets what was measured; a short grace only.
			drainUntil = minTime(drainUntil, time.Now().Add(100*time.Millisecond))
		}
		time.Sleep(time.Millisecond)
	}
	for _, w := range workers {
		w.tr.expireAll()
	}
	for _, w := range workers {
		_ = w.tr.close()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		if e != nil && runErr == nil {
			runErr = e
		}
	}
	if runErr != nil {
		return nil, runErr
	}
	rep.finish(workers, window)
	return rep, nil
}

// sockets are everything Run opens up front.
type sockets struct {
	load    []net.Conn   // TCP connections of the load phase (the measurement ones under TCP)
	conns   []net.Conn   // measurement sockets
	metrics net.Listener // nil when metrics are off
}

func openSockets(ctx context.Context, cfg *Config, dial func(context.Context, string, string) (net.Conn, error)) (*sockets, error) {
	s := &sockets{}
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()
	for range cfg.Conns {
		c, err := dial(ctx, cfg.Proto, cfg.Server)
		if err != nil {
			return nil, fmt.Errorf("dial %s %s: %w", cfg.Proto, cfg.Server, err)
		}
		if cfg.Proto == "udp" {
			if _, isUDP := c.(*net.UDPConn); !isUDP {
				c.Close()
				return nil, fmt.Errorf("%w: Dial returned %T for udp, want *net.UDPConn", ErrConfig, c)
			}
		}
		s.conns = append(s.conns, c)
	}
	if !cfg.NoLoad {
		if cfg.Proto == "tcp" {
			s.load = s.conns
		} else {
			// memcached's UDP has no flow control; the load phase goes over TCP to the same port.
			for range cfg.Conns {
				c, err := dial(ctx, "tcp", cfg.Server)
				if err != nil {
					return nil, fmt.Errorf("dial tcp %s for the load phase (or run without it): %w", cfg.Server, err)
				}
				s.load = append(s.load, c)
			}
		}
	}
	if cfg.MetricsAddr != "" {
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, "tcp", cfg.MetricsAddr)
		if err != nil {
			return nil, fmt.Errorf("listen for metrics on %s: %w", cfg.MetricsAddr, err)
		}
		s.metrics = l
	}
	ok = true
	return s, nil
}

func (s *sockets) closeLoad() {
	for _, c := range s.load {
		c.Close()
	}
	s.load = nil
}

func (s *sockets) closeAll() {
	for _, c := range s.conns {
		c.Close()
	}
	for _, c := range s.load {
		c.Close()
	}
	if s.metrics != nil {
		s.metrics.Close()
	}
}

func newWorkers(cfg *Config, model *workloadModel, ctl *control, s *sockets, val valueSource) ([]*worker, error) {
	ws := make([]*worker, len(s.conns))
	for i, c := range s.conns {
		w := &worker{
			ctl:     ctl,
			gen:     opGen{m: model, getRatio: cfg.GetRatio, r: rand.New(rand.NewPCG(cfg.Seed, uint64(i)))},
			batch:   cfg.Batch,
			singleP: runtime.GOMAXPROCS(0) == 1,
			meas:    newMeasurement(),
			lag:     newHist(),
		}
		inflight := 0
		if cfg.Rate > 0 {
			p, err := workload.NewPoisson(cfg.Rate / float64(cfg.Conns))
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrConfig, err)
			}
			w.poisson = p
			inflight = int(math.Ceil(cfg.Rate / float64(cfg.Conns) * cfg.Timeout.Seconds()))
		} else {
			// Spread the concurrency over the sockets, the remainder on the first ones.
			inflight = cfg.Concurrency / cfg.Conns
			if i < cfg.Concurrency%cfg.Conns {
				inflight++
			}
			w.tokens = make(chan struct{}, inflight)
			for range inflight {
				w.tokens <- struct{}{}
			}
		}
		if cfg.Proto == "udp" {
			t, err := newUDPTransport(w, c.(*net.UDPConn), model.space, val, inflight)
			if err != nil {
				return nil, err
			}
			t.echo = cfg.EchoReplies
			w.tr = t
		} else {
			w.tr = newTCPTransport(w, c, model.space, val)
		}
		ws[i] = w
	}
	return ws, nil
}

// drive runs the warmup and the measured window, printing progress, and stops the senders. It
// returns the window's length and the first worker error.
func drive(ctx context.Context, cfg *Config, ctl *control, workers []*worker, errs <-chan error, progress io.Writer) (time.Duration, error) {
	var (
		prev      snapshot
		prevRatio [2]float64
		havePrev  bool
		measuring bool
		startNs   int64
		warmStart = time.Now()
	)
	stop := func() time.Duration {
		now := ctl.now()
		ctl.stopAt.Store(now)
		close(ctl.stopCh)
		if !measuring {
			return 0
		}
		return time.Duration(now - startNs)
	}
	beginMeasure := func() {
		startNs = ctl.now()
		ctl.measureStart.Store(startNs)
		measuring = true
		fmt.Fprintf(progress, "measure: %s\n", cfg.Duration)
	}
	if ms := ctl.measureStart.Load(); ms != math.MaxInt64 {
		startNs, measuring = ms, true
		fmt.Fprintf(progress, "measure: %s\n", cfg.Duration)
	} else {
		fmt.Fprintf(progress, "warmup: %s\n", cfg.Warmup)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var end <-chan time.Time
	if measuring {
		end = time.After(cfg.Duration)
	}
	prev = take(workers)
	for {
		select {
		case <-ctx.Done():
			return stop(), nil
		case err := <-errs:
			// A worker only returns early on a fatal error; nil results come after stop.
			d := stop()
			if err == nil {
				err = errors.New("loadgen: worker stopped early")
			}
			return d, err
		case <-end:
			return stop(), nil
		case <-tick.C:
			cur := take(workers)
			delta := cur.sub(prev)
			prev = cur
			phase := "warmup"
			if measuring {
				phase = fmt.Sprintf("measure %.0fs", time.Duration(ctl.now()-startNs).Seconds())
			}
			fmt.Fprintf(progress, "%s: %s\n", phase, delta)
			if measuring {
				continue
			}
			ratio := [2]float64{delta.hitRatio(), delta.kernelShare()}
			settled := cfg.WarmupSettle <= 0 ||
				(havePrev && delta.gets() > 0 &&
					withinNoise(ratio[0], prevRatio[0], delta.gets(), cfg.WarmupSettle) &&
					withinNoise(ratio[1], prevRatio[1], delta.gets(), cfg.WarmupSettle))
			prevRatio, havePrev = ratio, true
			elapsed := time.Since(warmStart)
			if elapsed >= cfg.Warmup && (settled || elapsed >= cfg.WarmupMax) {
				if !settled {
					fmt.Fprintf(progress, "warmup: hit ratio still moving after %s; measuring anyway\n", cfg.WarmupMax)
				}
				beginMeasure()
				end = time.After(cfg.Duration)
			}
		}
	}
}

// withinNoise reports whether two window ratios differ by at most tol or by no more than three
// standard deviations of a ratio estimated from n samples.
func withinNoise(a, b float64, n uint64, tol float64) bool {
	p := (a + b) / 2
	noise := 3 * math.Sqrt(2*p*(1-p)/float64(n))
	return math.Abs(a-b) <= max(tol, noise)
}

func outstanding(workers []*worker) int {
	n := 0
	for _, w := range workers {
		n += w.tr.outstanding()
	}
	return n
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// snapshot is a reading of the live counters, for progress and warmup settling.
type snapshot struct {
	done                   [numClasses]uint64
	sent, timeouts, errors uint64
	lagMax                 int64
	at                     time.Time
	interval               time.Duration // for a difference of two snapshots
}

func take(workers []*worker) snapshot {
	s := snapshot{at: time.Now()}
	for _, w := range workers {
		for c := range s.done {
			s.done[c] += w.cnt.done[c].Load()
		}
		s.sent += w.cnt.sent.Load()
		s.timeouts += w.cnt.timeouts.Load()
		s.errors += w.cnt.errors.Load()
		s.lagMax = max(s.lagMax, w.lagMax.Swap(0))
	}
	return s
}

func (s snapshot) sub(o snapshot) snapshot {
	d := s
	for c := range d.done {
		d.done[c] -= o.done[c]
	}
	d.sent -= o.sent
	d.timeouts -= o.timeouts
	d.errors -= o.errors
	d.interval = s.at.Sub(o.at)
	return d
}

func (s snapshot) gets() uint64 { return s.done[KernelHit] + s.done[UserHit] + s.done[UserMiss] }

func (s snapshot) hitRatio() float64 {
	if s.gets() == 0 {
		return 0
	}
	return float64(s.done[KernelHit]+s.done[UserHit]) / float64(s.gets())
}

func (s snapshot) kernelShare() float64 {
	if s.gets() == 0 {
		return 0
	}
	return float64(s.done[KernelHit]) / float64(s.gets())
}

func (s snapshot) String() string {
	secs := s.interval.Seconds()
	if secs <= 0 {
		secs = 1
	}
	var done uint64
	for _, n := range s.done {
		done += n
	}
	return fmt.Sprintf("sent %.0f/s, answered %.0f/s, hit %.1f%%, kernel %.1f%%, timeouts %d, errors %d, max send lag %s",
		float64(s.sent)/secs, float64(done)/secs, 100*s.hitRatio(), 100*s.kernelShare(), s.timeouts, s.errors,
		time.Duration(s.lagMax).Round(time.Microsecond))
}
