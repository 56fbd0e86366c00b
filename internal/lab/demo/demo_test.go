package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// buildBinary builds cmd/xdpcache for the demo to run as serve and bench.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "xdpcache")
	out, err := exec.Command(testenv.LookPath(t, "go"), "build", "-o", bin, "../../../cmd/xdpcache").CombinedOutput()
	if err != nil {
		t.Fatalf("build xdpcache: %v\n%s", err, out)
	}
	return bin
}

// demoNamespaces lists the network namespaces the demo makes (prefix xcdemo-).
func demoNamespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "xcdemo-") {
			names = append(names, f[0])
		}
	}
	return names
}

func shortConfig(bin, dir string) Config {
	return Config{Binary: bin, ResultsDir: dir, Duration: 2 * time.Second, Warmup: time.Second,
		Rate: 5000, Keys: 1000, ZipfTheta: 0.99, ValueSize: 64, GetRatio: 0.95, Port: 11211}
}

// TestDemoOverVeth runs the README's main job for a few seconds: the kernel must answer most GETs
// over the veth pair, the results must be written, and nothing the demo made may be left behind.
// A second run is cancelled midway (Ctrl-C) and must clean up just the same.
func TestDemoOverVeth(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "ip")
	if left := demoNamespaces(t); len(left) > 0 {
		t.Fatalf("demo namespaces exist before the test: %v", left)
	}
	bin := buildBinary(t)

	dir := t.TempDir()
	var out, progress bytes.Buffer
	if err := Run(context.Background(), shortConfig(bin, dir), &out, &progress); err != nil {
		t.Fatalf("demo: %v\n%s", err, progress.String())
	}
	if !strings.Contains(progress.String(), "running on: veth pair") {
		t.Fatalf("the demo did not run on the veth pair:\n%s", progress.String())
	}
	if !strings.Contains(out.String(), "kernel_hit") {
		t.Errorf("no latency table on stdout:\n%s", out.String())
	}
	var rep struct {
		KernelShare float64 `json:"kernel_share"`
		Timeouts    uint64  `json:"timeouts"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "bench.json"))
	if err != nil {
		t.Fatalf("bench.json: %v", err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("bench.json: %v", err)
	}
	// 1000 keys, all cached after the warmup: nearly every GET is answered in the kernel.
	if rep.KernelShare < 0.5 {
		t.Errorf("kernel share %.2f over the veth pair, want most GETs", rep.KernelShare)
	}
	if fi, err := os.Stat(filepath.Join(dir, "bench.png")); err != nil || fi.Size() == 0 {
		t.Errorf("bench.png: %v", err)
	}
	if left := demoNamespaces(t); len(left) > 0 {
		t.Errorf("namespaces left after the demo: %v", left)
	}

	// Ctrl-C in the middle of the measurement.
	ctx, cancel := context.WithCancel(context.Background())
	cfg := shortConfig(bin, t.TempDir())
	cfg.Duration = 30 * time.Second
	go func() { time.Sleep(4 * time.Second); cancel() }()
	start := time.Now()
	progress.Reset()
	if err := Run(ctx, cfg, &out, &progress); err != nil {
		t.Fatalf("interrupted demo: %v\n%s", err, progress.String())
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the interrupted demo took %v to stop", took)
	}
	if left := demoNamespaces(t); len(left) > 0 {
		t.Errorf("namespaces left after an interrupted demo: %v", left)
	}
}
