package deploy

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// promqlNonMetric are the words of PromQL that are not metric names when they stand alone.
var promqlNonMetric = map[string]bool{
	"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true,
	"ignoring": true, "group_left": true, "group_right": true, "bool": true, "offset": true,
	"inf": true, "nan": true, "start": true, "end": true,
}

// promqlLabelLists are the words followed by a parenthesised list of label names.
var promqlLabelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// promqlMetrics returns the metric names a PromQL expression selects, sorted and deduplicated.
// It skips strings, label matchers ({...}), ranges and subqueries ([...]), numbers and
// durations, function and aggregation names (an identifier followed by "("), the label lists of
// by/without/on/ignoring/group_left/group_right, and Grafana variables ($x, ${x}, [[x]]).
// It reports unbalanced brackets and unterminated strings, which PromQL would reject too.
func promqlMetrics(expr string) ([]string, error) {
	s := []rune(expr)
	names := map[string]bool{}
	var stack []rune
	isIdentStart := func(r rune) bool { return r == '_' || r == ':' || isLetter(r) }
	isIdent := func(r rune) bool { return isIdentStart(r) || isDigit(r) }
	// skipSpace returns the index of the next non-space rune at or after i.
	skipSpace := func(i int) int {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
		return i
	}
	// skipString returns the index after the string literal starting at i.
	skipString := func(i int) (int, error) {
		q := s[i]
		for j := i + 1; j < len(s); j++ {
			switch {
			case s[j] == '\\' && q != '`':
				j++
			case s[j] == q:
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string at %d in %q", i, expr)
	}
	// skipGroup returns the index after the bracketed group opening at i, strings respected.
	skipGroup := func(i int) (int, error) {
		open := s[i]
		close := map[rune]rune{'{': '}', '[': ']', '(': ')'}[open]
		depth := 0
		for j := i; j < len(s); j++ {
			switch s[j] {
			case '"', '\'', '`':
				k, err := skipString(j)
				if err != nil {
					return 0, err
				}
				j = k - 1
			case open:
				depth++
			case close:
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unclosed %q at %d in %q", open, i, expr)
	}

	for i := 0; i < len(s); {
		r := s[i]
		switch {
		case r == '"' || r == '\'' || r == '`':
			j, err := skipString(i)
			if err != nil {
				return nil, err
			}
			i = j
		case r == '{' || r == '[':
			if r == '[' && i+1 < len(s) && s[i+1] == '[' { // Grafana's old [[var]]
				end := strings.Index(string(s[i:]), "]]")
				if end < 0 {
					return nil, fmt.Errorf("unclosed [[ at %d in %q", i, expr)
				}
				i += end + 2
				continue
			}
			j, err := skipGroup(i)
			if err != nil {
				return nil, err
			}
			i = j
		case r == '}' || r == ']':
			return nil, fmt.Errorf("unbalanced %q at %d in %q", r, i, expr)
		case r == '(':
			stack = append(stack, r)
			i++
		case r == ')':
			if len(stack) == 0 {
				return nil, fmt.Errorf("unbalanced ) at %d in %q", i, expr)
			}
			stack = stack[:len(stack)-1]
			i++
		case r == '$':
			// Grafana variable: ${name...} or $name.
			i++
			if i < len(s) && s[i] == '{' {
				end := strings.IndexRune(string(s[i:]), '}')
				if end < 0 {
					return nil, fmt.Errorf("unclosed ${ in %q", expr)
				}
				i += end + 1
			}
			// The rest of a name built around a variable cannot be checked either.
			for i < len(s) && isIdent(s[i]) {
				i++
			}
		case isDigit(r) || (r == '.' && i+1 < len(s) && isDigit(s[i+1])):
			// A number (1e-6, 0x1f, .5) or a duration (5m, 1h30m).
			for i < len(s) && (isIdent(s[i]) || s[i] == '.' ||
				((s[i] == '-' || s[i] == '+') && (s[i-1] == 'e' || s[i-1] == 'E'))) {
				i++
			}
		case isIdentStart(r):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := string(s[i:j])
			next := skipSpace(j)
			lw := strings.ToLower(word)
			switch {
			case promqlLabelLists[lw] && next < len(s) && s[next] == '(':
				k, err := skipGroup(next)
				if err != nil {
					return nil, err
				}
				j = k
			case promqlNonMetric[lw]:
			case next < len(s) && s[next] == '(':
				// A function or aggregation name; its arguments are scanned as usual.
			case aggregationModifier(s[next:]):
				// "sum by (x) (...)": an aggregation with its grouping first.
			default:
				names[word] = true
			}
			i = j
		default:
			i++
		}
	}
	if len(stack) != 0 {
		return nil, fmt.Errorf("unclosed ( in %q", expr)
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// aggregationModifier reports whether s starts with by or without and a label list.
func aggregationModifier(s []rune) bool {
	for _, w := range []string{"by", "without"} {
		if len(s) <= len(w) || !strings.EqualFold(string(s[:len(w)]), w) {
			continue
		}
		rest := strings.TrimLeft(string(s[len(w):]), " \t\n\r")
		if strings.HasPrefix(rest, "(") {
			return true
		}
	}
	return false
}

func isLetter(r rune) bool { return (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') }
func isDigit(r rune) bool  { return r >= '0' && r <= '9' }

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
		{`topk(5, ${metric_prefix}_total) or [[old]] or inf`, nil},
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
	for _, bad := range []string{`rate(a[5m]`, `a{x="y"`, `sum(a))`, `a{x="unterminated}`, `a]`} {
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
