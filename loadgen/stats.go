package loadgen

import (
	"sync/atomic"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Class says who answered a request and how.
type Class int

// The latency classes, in report order.
const (
	KernelHit Class = iota // GET hit answered by the XDP program (reply carries the DSCP mark)
	UserHit                // GET hit answered by the server
	UserMiss               // GET miss
	Set                    // set, any answer but an error
	numClasses
)

// Classes lists every class in report order.
var Classes = [...]Class{KernelHit, UserHit, UserMiss, Set}

var classNames = [...]string{"kernel_hit", "user_hit", "user_miss", "set"}

func (c Class) String() string {
	if c < 0 || c >= numClasses {
		return "unknown"
	}
	return classNames[c]
}

// Histogram range: 100 ns to 100 s at 3 significant digits. Values are nanoseconds.
const (
	histLowest  = 100
	histHighest = 100_000_000_000
	histDigits  = 3
)

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowest, histHighest, histDigits)
}

// counters are live totals since the start of the run, warmup included, read by the progress and
// warmup-settling loop while workers update them.
type counters struct {
	done     [numClasses]atomic.Uint64
	timeouts atomic.Uint64
	errors   atomic.Uint64
	sent     atomic.Uint64
	_        [64]byte // keep workers' counters on separate cache lines
}

// measurement is what one receiving goroutine records during the measured window. It is owned by
// that goroutine until the run ends; then the histograms are merged.
type measurement struct {
	hist     [numClasses]*hdrhistogram.Histogram
	timeouts uint64
	errors   uint64
	overflow uint64 // values beyond the histogram range, recorded at its top
}

func newMeasurement() *measurement {
	m := &measurement{}
	for c := range m.hist {
		m.hist[c] = newHist()
	}
	return m
}

func (m *measurement) record(c Class, ns int64) {
	if ns < histLowest {
		ns = histLowest
	}
	if ns > histHighest {
		ns = histHighest
		m.overflow++
	}
	_ = m.hist[c].RecordValue(ns) // cannot fail: clamped to the range above
}

func (m *measurement) merge(o *measurement) {
	for c := range m.hist {
		m.hist[c].Merge(o.hist[c])
	}
	m.timeouts += o.timeouts
	m.errors += o.errors
	m.overflow += o.overflow
}
