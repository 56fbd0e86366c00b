package deploy

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

// promql is Prometheus' own parser with its default functions.
var promql = parser.NewParser(parser.Options{})

// grafanaIntervals are Grafana's built-in interval variables ($__rate_interval, ${__interval},
// ...), which stand where PromQL wants a duration. They are the only Grafana syntax a query may
// hold outside a string; anything else the parser rejects.
var grafanaIntervals = regexp.MustCompile(`\$(?:__(?:rate_interval|interval|range)\b|\{__(?:rate_interval|interval|range)\})`)

// promqlMetrics parses a PromQL expression, as Grafana sends it to Prometheus, with Prometheus'
// parser and returns the metric names it selects, sorted and deduplicated. Grafana's interval
// variables become a duration first; variables inside label matcher strings ("$instance") are
// plain strings to PromQL. A selector by label matchers alone ({__name__="x"}) names no metric.
func promqlMetrics(expr string) ([]string, error) {
	e, err := promql.ParseExpr(grafanaIntervals.ReplaceAllString(expr, "5m"))
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", expr, err)
	}
	names := map[string]bool{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok && vs.Name != "" {
			names[vs.Name] = true
		}
		return nil
	})
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// resolveMetric maps a selected series name to the exported family it belongs to: histogram
// series carry _bucket, _sum and _count suffixes that the family name does not.
func resolveMetric(name string, golden map[string]string) (family string, ok bool) {
	if _, ok := golden[name]; ok {
		return name, true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suf)
		if !found {
			continue
		}
		switch golden[base] {
		case "histogram":
			return base, true
		case "summary":
			if suf != "_bucket" {
				return base, true
			}
		}
	}
	return "", false
}

func TestPromQLMetrics(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`xdpcache_items`, []string{"xdpcache_items"}},
		{`rate(xdpcache_kernel_hits_total{instance=~"$instance"}[$__rate_interval])`, []string{"xdpcache_kernel_hits_total"}},
		{`sum by (le, command) (rate(xdpcache_request_duration_seconds_bucket{command="get"}[5m]))`,
			[]string{"xdpcache_request_duration_seconds_bucket"}},
		{`histogram_quantile(0.99, sum(rate(a_bucket[1m])) by (le))`, []string{"a_bucket"}},
		{`sum without(instance)(a) / on(job) group_left(node) b offset 5m`, []string{"a", "b"}},
		{`(a or (sum by (instance) (b{x="or (c)"}) * 0)) + c_total > bool 1e-6`, []string{"a", "b", "c_total"}},
		{`label_replace(up{job="x"}, "dst", "$1", "src", "(.*)")`, []string{"up"}},
		{`max_over_time(deriv(a[5m:1m])[1h:]) and unless_metric`, []string{"a", "unless_metric"}},
		{`increase(a[${__interval}]) / b offset $__range`, []string{"a", "b"}},
		{`{__name__="only_matchers"}`, nil},
		{`Sum By (x) (a)`, []string{"a"}},
	} {
		got, err := promqlMetrics(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if len(got) == 0 && len(tc.want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: metrics %q, want %q", tc.expr, got, tc.want)
		}
	}
	// Unbalanced brackets, unterminated strings, and Grafana variables where a metric name or an
	// expression stands: a query the panel would send Prometheus broken, or one whose metric
	// cannot be checked.
	for _, bad := range []string{`rate(a[5m]`, `a{x="y"`, `sum(a))`, `a{x="unterminated}`, `a]`,
		`topk(5, ${metric_prefix}_total)`, `a or [[old]]`, `rate(a[$window])`} {
		if got, err := promqlMetrics(bad); err == nil {
			t.Errorf("%s: no error (metrics %q)", bad, got)
		}
	}
}

func TestResolveMetric(t *testing.T) {
	golden := map[string]string{"h_seconds": "histogram", "s_seconds": "summary", "c_total": "counter", "g": "gauge"}
	for name, want := range map[string]string{
		"h_seconds_bucket": "h_seconds", "h_seconds_sum": "h_seconds", "h_seconds_count": "h_seconds",
		"h_seconds": "h_seconds", "s_seconds_sum": "s_seconds", "c_total": "c_total", "g": "g",
		"s_seconds_bucket": "", "c_total_count": "", "g_sum": "", "nope": "",
	} {
		got, ok := resolveMetric(name, golden)
		if ok != (want != "") || got != want {
			t.Errorf("resolveMetric(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}
