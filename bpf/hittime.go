package bpf

import (
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The kernel programs time a sample of the requests they answer (bpf/c/timing.h) into per-CPU
// log2 histograms: bucket b holds times in (2^(b-1), 2^b] units of 2^-30 s, which is bucket
// b-30 of a Prometheus native histogram of schema 0. The collector exports them as
// xdpcache_kernel_hit_duration_seconds{program}, classic buckets and native ones on one series.

// DefaultHitTimeSample is Options.HitTimeSample's default: one answered request in 64 is timed.
const DefaultHitTimeSample = 64

// hitTimeUnitExp is the histogram's unit as a power of two seconds: 2^-30 s.
const hitTimeUnitExp = -30

// hitTimeClassic are the kernel buckets whose upper bounds are exported as classic buckets:
// 2^-26 s (15 ns) to 2^-13 s (122 us), where the kernel path's times lie; the native histogram
// has them all.
const (
	hitTimeClassicFirst = 4
	hitTimeClassicLast  = 17
)

var hitTimePrograms = [xdpcacheHitTimeProgHIT_TIME_PROGS]string{
	xdpcacheHitTimeProgHIT_TIME_XDP: "xdp",
	xdpcacheHitTimeProgHIT_TIME_TC:  "tc",
}

var descHitTime = prometheus.NewDesc("xdpcache_kernel_hit_duration_seconds",
	"Time a kernel program spent on a request it answered, from its start to the reply built, by program (xdp, tc); a sample of one answered request in Options.HitTimeSample.",
	[]string{"program"}, nil)

// HitTimes is one program's histogram of answered requests' times, summed over CPUs.
type HitTimes struct {
	// Buckets[b] counts times in (2^(b-31), 2^(b-30)] seconds (bucket 0: up to 2^-30 s, and the
	// last bucket everything longer).
	Buckets [len(xdpcacheHitTimeHist{}.Bucket)]uint64
	Sum     time.Duration
}

// Count is the number of timed requests.
func (h HitTimes) Count() uint64 {
	var n uint64
	for _, c := range h.Buckets {
		n += c
	}
	return n
}

// UpperBound is bucket b's upper bound in seconds.
func (HitTimes) UpperBound(b int) float64 { return math.Ldexp(1, b+hitTimeUnitExp) }

// HitTimes returns the XDP and the TC program's histograms, keyed "xdp" and "tc".
func (c *Cache) HitTimes() (map[string]HitTimes, error) {
	out := make(map[string]HitTimes, len(hitTimePrograms))
	for prog, name := range hitTimePrograms {
		var perCPU []xdpcacheHitTimeHist
		if err := c.objs.HitTime.Lookup(uint32(prog), &perCPU); err != nil {
			return nil, fmt.Errorf("read %s hit times: %w", name, err)
		}
		var h HitTimes
		var sum uint64
		for _, cpu := range perCPU {
			for b, n := range cpu.Bucket {
				h.Buckets[b] += n
			}
			sum += cpu.SumNs
		}
		h.Sum = time.Duration(sum)
		out[name] = h
	}
	return out, nil
}

// hitTimeMetric is both forms of one program's histogram on one series, which the client
// library's constructors build one at a time.
type hitTimeMetric struct {
	m *dto.Metric
}

func (h hitTimeMetric) Desc() *prometheus.Desc { return descHitTime }

func (h hitTimeMetric) Write(out *dto.Metric) error {
	out.Label = h.m.Label
	out.Histogram = h.m.Histogram
	return nil
}

// newHitTimeMetric builds program's series from h: classic buckets and a schema-0 native
// histogram from the same counts. created is when the counts started.
func newHitTimeMetric(program string, h HitTimes, created time.Time) (prometheus.Metric, error) {
	count := h.Count()
	sum := h.Sum.Seconds()
	classic := make(map[float64]uint64, hitTimeClassicLast-hitTimeClassicFirst+1)
	var cum uint64
	native := make(map[int]int64)
	for b, n := range h.Buckets {
		cum += n
		if b >= hitTimeClassicFirst && b <= hitTimeClassicLast {
			classic[h.UpperBound(b)] = cum
		}
		if n > 0 {
			native[b+hitTimeUnitExp] = int64(n)
		}
	}
	cm, err := prometheus.NewConstHistogramWithCreatedTimestamp(descHitTime, count, sum, classic, created, program)
	if err != nil {
		return nil, err
	}
	nm, err := prometheus.NewConstNativeHistogram(descHitTime, count, sum, native, nil, 0, 0, 0, created, program)
	if err != nil {
		return nil, err
	}
	var both, cd dto.Metric
	if err := nm.Write(&both); err != nil {
		return nil, err
	}
	if err := cm.Write(&cd); err != nil {
		return nil, err
	}
	both.Histogram.Bucket = cd.Histogram.Bucket
	return hitTimeMetric{&both}, nil
}
