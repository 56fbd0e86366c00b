package deploy

import (
	"fmt"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// nonBaseUnits are name parts that mean a scaled or non-base unit; Prometheus wants seconds and
// bytes, with the scaling done in the query or the dashboard.
var nonBaseUnits = []string{
	"ns", "nanoseconds", "us", "usec", "micros", "microseconds", "ms", "msec", "millis",
	"milliseconds", "minutes", "hours", "days",
	"kb", "kib", "mb", "mib", "gb", "gib", "kilobytes", "megabytes", "gigabytes", "bits",
	"percent", "celsius",
}

// durationWords and sizeWords in a name ask for the base unit suffix.
var (
	durationWords = []string{"duration", "latency", "time", "elapsed", "wait", "delay", "runtime"}
	sizeWords     = []string{"size", "memory", "mem", "length", "len"}
)

// namingProblems returns every way mf breaks the project's metric conventions.
func namingProblems(mf *dto.MetricFamily) []string {
	name := mf.GetName()
	var probs []string
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }

	if !strings.HasPrefix(name, "xdpcache_") {
		bad("no xdpcache_ prefix")
	}
	if strings.TrimSpace(mf.GetHelp()) == "" {
		bad("no help text")
	}
	parts := strings.Split(name, "_")
	has := func(w string) bool {
		for _, p := range parts {
			if p == w {
				return true
			}
		}
		return false
	}
	for _, u := range nonBaseUnits {
		if has(u) {
			bad("non-base unit %q (use _seconds or _bytes)", u)
		}
	}
	// What the name measures, with any _total stripped.
	base := strings.TrimSuffix(name, "_total")
	switch mf.GetType() {
	case dto.MetricType_COUNTER:
		if !strings.HasSuffix(name, "_total") {
			bad("counter without _total")
		}
	default:
		if strings.HasSuffix(name, "_total") {
			bad("%s ends in _total, which is for counters", strings.ToLower(mf.GetType().String()))
		}
	}
	for _, w := range durationWords {
		if has(w) && !strings.HasSuffix(base, "_seconds") {
			bad("%q names a duration: end in _seconds", w)
		}
	}
	for _, w := range sizeWords {
		if has(w) && !strings.HasSuffix(base, "_bytes") {
			bad("%q names a size: end in _bytes", w)
		}
	}
	if strings.HasSuffix(base, "_seconds") && mf.GetType() == dto.MetricType_HISTOGRAM {
		if lo, ok := lowestBound(mf); !ok {
			bad("latency histogram without classic buckets")
		} else if lo > 10e-6 {
			bad("latency histogram's lowest bucket %gs is above 10us: it hides the kernel path", lo)
		}
	}
	return probs
}

// lowestBound is the smallest finite upper bound over every series of a histogram family.
func lowestBound(mf *dto.MetricFamily) (float64, bool) {
	lo, found := 0.0, false
	for _, m := range mf.GetMetric() {
		for _, b := range m.GetHistogram().GetBucket() {
			if ub := b.GetUpperBound(); !found || ub < lo {
				lo, found = ub, true
			}
		}
	}
	return lo, found
}

func checkNaming(t *testing.T, fams []family) {
	t.Helper()
	if len(fams) == 0 {
		t.Fatal("no metric families gathered")
	}
	for _, f := range fams {
		for _, p := range namingProblems(f.mf) {
			t.Errorf("%s (%s): %s", f.mf.GetName(), f.source, p)
		}
		// The load generator's families are scraped as text, which cannot carry native
		// histograms; the server's and the kernel's are gathered directly.
		if f.source != srcLoadgen {
			if p := nativeProblem(f.mf); p != "" {
				t.Errorf("%s (%s): %s", f.mf.GetName(), f.source, p)
			}
		}
	}
}

// nativeProblem says why a latency histogram family lacks a native histogram in one of its
// series ("" when it has them all, or is not a latency histogram).
func nativeProblem(mf *dto.MetricFamily) string {
	if mf.GetType() != dto.MetricType_HISTOGRAM || !strings.HasSuffix(mf.GetName(), "_seconds") {
		return ""
	}
	if len(mf.GetMetric()) == 0 {
		return "latency histogram with no series to check"
	}
	for _, m := range mf.GetMetric() {
		if m.GetHistogram().Schema == nil {
			return fmt.Sprintf("latency histogram series %v without a native histogram", m.GetLabel())
		}
	}
	return ""
}

// TestMetricNaming holds every exported family to the conventions of docs/DESIGN.md, section
// Metrics.
func TestMetricNaming(t *testing.T) {
	checkNaming(t, commonFamilies(t))
	t.Run("kernel", func(t *testing.T) { checkNaming(t, kernelFamilies(t)) })
}

// TestNamingProblemsCatches proves the checks above can fail: each bad family must be flagged.
func TestNamingProblemsCatches(t *testing.T) {
	str := func(s string) *string { return &s }
	typ := func(t dto.MetricType) *dto.MetricType { return &t }
	hist := func(bounds ...float64) []*dto.Metric {
		var bs []*dto.Bucket
		for _, b := range bounds {
			bs = append(bs, &dto.Bucket{UpperBound: &b})
		}
		return []*dto.Metric{{Histogram: &dto.Histogram{Bucket: bs}}}
	}
	for _, tc := range []struct {
		name string
		mf   *dto.MetricFamily
		want string
	}{
		{"no prefix", &dto.MetricFamily{Name: str("memcached_items"), Help: str("h"), Type: typ(dto.MetricType_GAUGE)}, "prefix"},
		{"no help", &dto.MetricFamily{Name: str("xdpcache_items"), Help: str(" "), Type: typ(dto.MetricType_GAUGE)}, "help"},
		{"counter suffix", &dto.MetricFamily{Name: str("xdpcache_hits"), Help: str("h"), Type: typ(dto.MetricType_COUNTER)}, "_total"},
		{"gauge total", &dto.MetricFamily{Name: str("xdpcache_items_total"), Help: str("h"), Type: typ(dto.MetricType_GAUGE)}, "counters"},
		{"ms", &dto.MetricFamily{Name: str("xdpcache_latency_ms"), Help: str("h"), Type: typ(dto.MetricType_GAUGE)}, "non-base"},
		{"microseconds", &dto.MetricFamily{Name: str("xdpcache_run_microseconds_total"), Help: str("h"), Type: typ(dto.MetricType_COUNTER)}, "non-base"},
		{"kb", &dto.MetricFamily{Name: str("xdpcache_cache_kb"), Help: str("h"), Type: typ(dto.MetricType_GAUGE)}, "non-base"},
		{"duration unit", &dto.MetricFamily{Name: str("xdpcache_request_duration"), Help: str("h"), Type: typ(dto.MetricType_GAUGE)}, "_seconds"},
		{"size unit", &dto.MetricFamily{Name: str("xdpcache_item_size"), Help: str("h"), Type: typ(dto.MetricType_GAUGE)}, "_bytes"},
		{"coarse buckets", &dto.MetricFamily{Name: str("xdpcache_request_duration_seconds"), Help: str("h"),
			Type: typ(dto.MetricType_HISTOGRAM), Metric: hist(0.005, 0.01, 0.1)}, "above 10us"},
		{"no buckets", &dto.MetricFamily{Name: str("xdpcache_request_duration_seconds"), Help: str("h"),
			Type: typ(dto.MetricType_HISTOGRAM), Metric: hist()}, "without classic buckets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probs := namingProblems(tc.mf)
			if !strings.Contains(strings.Join(probs, "; "), tc.want) {
				t.Errorf("problems %q, want one mentioning %q", probs, tc.want)
			}
		})
	}
	if p := nativeProblem(&dto.MetricFamily{Name: str("xdpcache_request_duration_seconds"), Help: str("h"),
		Type: typ(dto.MetricType_HISTOGRAM), Metric: hist(1e-6)}); !strings.Contains(p, "without a native") {
		t.Errorf("a histogram without native buckets: problem %q, want one saying so", p)
	}
	schema := int32(3)
	native := &dto.MetricFamily{Name: str("xdpcache_request_duration_seconds"), Help: str("h"),
		Type: typ(dto.MetricType_HISTOGRAM), Metric: []*dto.Metric{{Histogram: &dto.Histogram{Schema: &schema}}}}
	if p := nativeProblem(native); p != "" {
		t.Errorf("a native histogram flagged: %q", p)
	}
	good := &dto.MetricFamily{Name: func() *string { s := "xdpcache_request_duration_seconds"; return &s }(),
		Help: str("h"), Type: typ(dto.MetricType_HISTOGRAM), Metric: hist(1e-6, 1e-3)}
	if probs := namingProblems(good); len(probs) != 0 {
		t.Errorf("a good histogram flagged: %q", probs)
	}
}
