package experiment

import (
	"math"
	"testing"
)

// TestReadReportOfRealBenchOutput reads a file `xdpcache bench --json` wrote (the kernel case of a
// throughput run), so the experiments and the generator agree on the format.
func TestReadReportOfRealBenchOutput(t *testing.T) {
	r, err := ReadReport("testdata/bench-kernel.json")
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(r.AchievedRate-196292.21) > 0.01 || r.KernelShare != 1 {
		t.Errorf("achieved %.2f req/s, kernel share %v; want 196292.21 and 1", r.AchievedRate, r.KernelShare)
	}
	k, ok := r.Classes["kernel_hit"]
	if !ok || k.Count != 981480 || k.P50Us != 85.503 {
		t.Errorf("kernel_hit = %+v (present %v); want count 981480, p50 85.503 µs", k, ok)
	}
	if _, err := ReadReport("testdata/no-such.json"); err == nil {
		t.Error("a missing report read without error")
	}
}
