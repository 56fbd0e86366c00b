package experiment

import (
	"bytes"
	"encoding/csv"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/loadgen"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and a parenthesis must not shift the fields.
	line := "4242 (xdp cache) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0"
	got, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 325 * clockTick; got != want {
		t.Fatalf("cpu time %v, want %v", got, want)
	}
	if _, err := parseProcStat("4242 (short) S 1 2"); err == nil {
		t.Fatal("a truncated stat line parsed")
	}
}

func TestParseCPUTimes(t *testing.T) {
	stat := "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\ncpu1 10 20 30 40 50 60 70 80 0 0\nintr 5\n"
	got, err := parseCPUTimes(stat, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got.User != 100*time.Millisecond || got.SoftIRQ != 700*time.Millisecond || got.Steal != 800*time.Millisecond {
		t.Fatalf("cpu1 parsed as %+v", got)
	}
	// Busy leaves out idle and iowait: 10+20+30+60+70+80 ticks.
	if want := 270 * clockTick; got.Busy() != want {
		t.Fatalf("busy %v, want %v", got.Busy(), want)
	}
	if _, err := parseCPUTimes(stat, 2); err == nil {
		t.Fatal("a missing CPU parsed")
	}
}

func TestMedianRatio(t *testing.T) {
	if m := median([]float64{5, 1, 3}); m != 3 {
		t.Fatalf("median %v", m)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(ratio(1, 0)) {
		t.Fatal("empty median or ratio over zero is not NaN")
	}
	if fmtRatio(ratio(3, 2)) != "1.50" || fmtRatio(math.NaN()) != "-" {
		t.Fatal("fmtRatio")
	}
}

func TestCPUFigures(t *testing.T) {
	t0 := time.Unix(100, 0)
	a := cpuSnap{at: t0, gets: 1000, kernel: 900, proc: time.Second, napi: 2 * time.Second,
		core: CPUTimes{System: time.Second}, progTime: time.Millisecond, progRuns: 10, hasKernel: true}
	b := cpuSnap{at: t0.Add(2 * time.Second), gets: 11000, kernel: 9900, proc: time.Second + 10*time.Millisecond,
		napi: 2*time.Second + 50*time.Millisecond, core: CPUTimes{System: time.Second + 100*time.Millisecond, SoftIRQ: 10 * time.Millisecond},
		progTime: time.Millisecond + 2*time.Millisecond, progRuns: 10010, hasKernel: true}
	r := cpuFigures(caseKernel, a, b)
	check := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9*want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("process ns per userspace GET", r.ProcNsPerGet, 10e6/1000) // 10 ms over 1,000 userspace GETs
	check("NAPI ns per GET", r.NAPINsPerGet, 50e6/10000)
	check("core ns per GET", r.CoreNsPerGet, 110e6/10000)
	check("XDP ns per run", r.XDPNsPerRun, 2e6/10000)
	check("XDP ns per kernel hit", r.XDPNsPerHit, 2e6/9000)
	check("process CPU share", r.ProcCPUShare, 0.005)
	if r.Gets != 10000 || r.KernelGets != 9000 || r.WindowS != 2 {
		t.Fatalf("counts %+v", r)
	}
}

func TestMixSummary(t *testing.T) {
	run := func(kernel bool, p50 float64) mixRun {
		rep := &Report{Classes: map[string]loadgen.ClassStats{"user_miss": {Count: 10, P50Us: p50}}}
		return mixRun{Kernel: kernel, Hot: &Report{KernelShare: 1}, User: rep}
	}
	// Medians per mode: off 40 (of 40, 50, 30), on 60 (of 60, 70, 10).
	runs := []mixRun{run(false, 40), run(true, 60), run(true, 70), run(false, 50), run(false, 30), run(true, 10)}
	s := mixSummary(runs, "user_miss", 100, 10, "miss", "dir")
	var line string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "userspace p50") {
			line = l
		}
	}
	if f := strings.Fields(line); len(f) != 6 || f[3] != "40.0" || f[4] != "60.0" || f[5] != "1.50" {
		t.Fatalf("p50 line %q", line)
	}
}

func TestSweepOutputs(t *testing.T) {
	dir := t.TempDir()
	pts := []sweepPoint{
		{Theta: 0.99, CachePercent: 1, Entries: 100, KernelShare: 0.5},
		{Theta: 0.99, CachePercent: 100, Entries: 10000, KernelShare: 0.97},
		{Theta: 1.2, CachePercent: 1, Entries: 100, KernelShare: 0.8, Fills: 250, Evictions: 150, AdmissionsRefused: 40},
		{Theta: 1.2, CachePercent: 100, Entries: 10000, KernelShare: 0.99},
	}
	if err := writeSweep(dir, pts); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "points.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 5 || rows[3][0] != "1.2" || rows[3][3] != "0.8000" || rows[0][8] != "kernel_evictions" ||
		rows[3][7] != "250" || rows[3][8] != "150" || rows[3][9] != "40" {
		t.Fatalf("csv %v", rows)
	}
	png := filepath.Join(dir, "sweep.png")
	if err := plotSweep(png, pts, 10000, "always"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(png)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatal("sweep.png is not a PNG")
	}
	s := sweepSummary(pts, []float64{0.99, 1.2}, []float64{1, 100}, 10000, 1, "always", dir)
	if !strings.Contains(s, "0.99      50.0    97.0") || !strings.Contains(s, "1.2       80.0    99.0") {
		t.Fatalf("summary grid:\n%s", s)
	}
}
