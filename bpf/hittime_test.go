package bpf

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestHitTimeMetric: one series carries the classic buckets (cumulative, bounds 2^-26 s to
// 2^-13 s) and the native schema-0 histogram of the same counts, bucket b at native index b-30.
func TestHitTimeMetric(t *testing.T) {
	var h HitTimes
	h.Buckets[22] = 3 // (2^-9, 2^-8] us: ~2-4 ms, above the last classic bound
	h.Buckets[7] = 5  // (2^-24, 2^-23] s: 60-119 ns
	h.Buckets[8] = 2  // 119-238 ns
	h.Sum = 12 * time.Millisecond
	m, err := newHitTimeMetric("xdp", h, time.Unix(1e9, 0))
	if err != nil {
		t.Fatal(err)
	}
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	hist := pb.GetHistogram()
	if hist.GetSampleCount() != 10 || hist.GetSampleSum() != 0.012 {
		t.Errorf("count %d sum %v, want 10 and 0.012", hist.GetSampleCount(), hist.GetSampleSum())
	}
	if l := pb.GetLabel(); len(l) != 1 || l[0].GetName() != "program" || l[0].GetValue() != "xdp" {
		t.Errorf("labels %v, want program=xdp", l)
	}
	// Classic: 14 bounds, cumulative.
	bs := hist.GetBucket()
	if len(bs) != hitTimeClassicLast-hitTimeClassicFirst+1 {
		t.Fatalf("%d classic buckets, want %d", len(bs), hitTimeClassicLast-hitTimeClassicFirst+1)
	}
	for i, b := range bs {
		k := hitTimeClassicFirst + i
		var want uint64
		switch {
		case k >= 8:
			want = 7
		case k == 7:
			want = 5
		}
		if b.GetUpperBound() != h.UpperBound(k) || b.GetCumulativeCount() != want {
			t.Errorf("classic bucket %d: le=%g count %d, want le=%g count %d", i, b.GetUpperBound(), b.GetCumulativeCount(), h.UpperBound(k), want)
		}
	}
	if bs[0].GetUpperBound() != 1.0/(1<<26) || bs[len(bs)-1].GetUpperBound() > 10e-3 || bs[0].GetUpperBound() > 10e-6 {
		t.Errorf("classic bounds %g..%g", bs[0].GetUpperBound(), bs[len(bs)-1].GetUpperBound())
	}
	// Native: decode spans and deltas back to index -> count.
	if hist.GetSchema() != 0 {
		t.Errorf("schema %d, want 0", hist.GetSchema())
	}
	got := map[int32]int64{}
	idx, cnt := int32(0), int64(0)
	di := 0
	for i, sp := range hist.GetPositiveSpan() {
		if i == 0 {
			idx = sp.GetOffset()
		} else {
			idx += sp.GetOffset()
		}
		for range sp.GetLength() {
			cnt += hist.GetPositiveDelta()[di]
			di++
			if cnt != 0 {
				got[idx] = cnt
			}
			idx++
		}
	}
	want := map[int32]int64{7 - 30: 5, 8 - 30: 2, 22 - 30: 3}
	if len(got) != len(want) {
		t.Fatalf("native buckets %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("native bucket %d: %d, want %d (all %v)", k, got[k], v, got)
		}
	}
}

// TestProgramTimesHits: with every request timed, the XDP program's histogram counts exactly the
// requests it answered (not the ones it passed) with plausible times; sampled one in 64, about
// one in 64 of them.
func TestProgramTimesHits(t *testing.T) {
	c := newTestCache(t, Options{HitTimeSample: 1})
	fill(t, c, testStoreOne())
	hit := request(keysCommand("get", "k")).Bytes()
	miss := request(keysCommand("get", "nope")).Bytes()
	for range 5 {
		if v, _ := run(t, c.Program(), hit); v != xdpTX {
			t.Fatalf("verdict %d, want a kernel answer", v)
		}
	}
	for range 3 {
		if v, _ := run(t, c.Program(), miss); v == xdpTX {
			t.Fatal("a miss was answered")
		}
	}
	hts, err := c.HitTimes()
	if err != nil {
		t.Fatal(err)
	}
	x := hts["xdp"]
	if x.Count() != 5 {
		t.Fatalf("%d hits timed, want 5: %v", x.Count(), x.Buckets)
	}
	t.Logf("5 hits: sum %v, buckets %v", x.Sum, x.Buckets)
	if x.Sum <= 0 || x.Sum > 5*time.Millisecond {
		t.Errorf("sum of 5 hit times %v: want above 0 and far below 1 ms each", x.Sum)
	}
	for b, n := range x.Buckets {
		if n > 0 && x.UpperBound(b) > 1e-3 {
			t.Errorf("%d hits in bucket le=%gs: a hit taking a millisecond", n, x.UpperBound(b))
		}
	}
	if tc := hts["tc"]; tc.Count() != 0 {
		t.Errorf("TC program timed %d requests it never saw", tc.Count())
	}

	s := newTestCache(t, Options{})
	fill(t, s, testStoreOne())
	frame := request(keysCommand("get", "k")).Bytes()
	const n = 640
	for range n {
		if v, _ := run(t, s.Program(), frame); v != xdpTX {
			t.Fatalf("verdict %d, want a kernel answer", v)
		}
	}
	hts, err = s.HitTimes()
	if err != nil {
		t.Fatal(err)
	}
	// Each CPU's tick starts at 0 and times its first request: a run spread over CPUs times
	// at most one more per CPU.
	if got := hts["xdp"].Count(); got < n/DefaultHitTimeSample || got > n/DefaultHitTimeSample+uint64(runtime.NumCPU()) {
		t.Errorf("%d of %d hits timed with the default sample, want %d (+ at most one per CPU)", got, n, n/DefaultHitTimeSample)
	}
}

// TestCollectorHitTime: the collector exports the program's histograms as one family with
// classic and native buckets on each series.
func TestCollectorHitTime(t *testing.T) {
	c := newTestCache(t, Options{HitTimeSample: 1})
	fill(t, c, testStoreOne())
	if v, _ := run(t, c.Program(), request(keysCommand("get", "k")).Bytes()); v != xdpTX {
		t.Fatalf("verdict %d", v)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var fam *dto.MetricFamily
	for _, mf := range mfs {
		if mf.GetName() == "xdpcache_kernel_hit_duration_seconds" {
			fam = mf
		}
	}
	if fam == nil || fam.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("no histogram xdpcache_kernel_hit_duration_seconds in %d families", len(mfs))
	}
	counts := map[string]uint64{}
	for _, m := range fam.GetMetric() {
		counts[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
		if m.GetHistogram().Schema == nil || len(m.GetHistogram().GetBucket()) == 0 {
			t.Errorf("series %v lacks classic or native buckets", m.GetLabel())
		}
	}
	if counts["xdp"] != 1 || counts["tc"] != 0 || len(counts) != 2 {
		t.Errorf("timed requests by program %v, want xdp 1, tc 0", counts)
	}
}
