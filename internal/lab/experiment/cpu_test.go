package experiment

import (
	"strings"
	"testing"
)

// TestCPUSummaryMedian: three rounds whose memcached/XDP ratios are 40, 10 and 20 summarise to
// the median 20, with every round listed.
func TestCPUSummaryMedian(t *testing.T) {
	var rs []cpuResult
	for i, xdp := range []float64{200, 800, 400} {
		rs = append(rs,
			cpuResult{Round: i + 1, Case: caseKernel, WindowS: 1, Gets: 100, KernelGets: 100, XDPNsPerHit: xdp},
			cpuResult{Round: i + 1, Case: caseMemcached, WindowS: 1, Gets: 100, ProcNsPerGet: 8000})
	}
	out := cpuSummary(rs, 30000, 32, "dir")
	for _, want := range []string{"round 1:", "round 3:", "median of 3 round(s): 20.00 (rounds: 40.00, 10.00, 20.00"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}
