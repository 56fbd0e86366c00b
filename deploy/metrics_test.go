package deploy

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/loadgen"
	"github.com/xdpcache/xdpcache/server"
)

var update = flag.Bool("update", false, "rewrite testdata/metrics.golden from the gathered metrics (needs root: the kernel collector must be in it)")

const goldenPath = "testdata/metrics.golden"

// Metric sources, as named in the golden file.
const (
	srcServer  = "server"
	srcKernel  = "kernel"
	srcLoadgen = "loadgen"
)

// family is one gathered metric family and where it came from.
type family struct {
	source string
	mf     *dto.MetricFamily
}

// line is the family's golden line: NAME TYPE SOURCE LABELS, LABELS being its label names
// sorted and joined by commas ("-" for none). A new or renamed label breaks queries as surely as
// a renamed metric.
func (f family) line() string {
	seen := map[string]bool{}
	var labels []string
	for _, m := range f.mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if !seen[lp.GetName()] {
				seen[lp.GetName()] = true
				labels = append(labels, lp.GetName())
			}
		}
	}
	sort.Strings(labels)
	ls := strings.Join(labels, ",")
	if ls == "" {
		ls = "-"
	}
	return fmt.Sprintf("%s %s %s %s", f.mf.GetName(), strings.ToLower(f.mf.GetType().String()), f.source, ls)
}

// startServer runs an xdpcache server on a loopback TCP port with its metrics in reg.
func startServer(t *testing.T, cfg server.Config) (*server.Server, string) {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTCP(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil && !errors.Is(err, server.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			t.Errorf("serve tcp: %v", err)
		}
	})
	return srv, ln.Addr().String()
}

// serverFamilies gathers the server's metrics after a set, a hit and a miss, so that the labelled
// families (commands, request duration) have children and show up.
func serverFamilies(t *testing.T) []family {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	_, addr := startServer(t, server.Config{Registry: reg})
	c := memcache.New(addr)
	c.Timeout = 2 * time.Second
	if err := c.Set(&memcache.Item{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatalf("set: %v", err)
	}
	if _, err := c.Get("k"); err != nil {
		t.Fatalf("get hit: %v", err)
	}
	if _, err := c.Get("absent"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("get miss: %v, want a miss", err)
	}
	return gather(t, reg, srcServer)
}

// kernelFamilies gathers the kernel cache's collector. Loading the program needs root.
func kernelFamilies(t *testing.T) []family {
	t.Helper()
	testenv.RequireRoot(t)
	kc, err := bpf.New(bpf.Options{MaxBytes: 1 << 20, MaxEntries: 1024})
	if err != nil {
		t.Fatalf("load kernel cache: %+v", err)
	}
	t.Cleanup(func() { kc.Close() })
	if err := kc.EnableRunStats(); err != nil {
		t.Fatalf("enable run stats: %v", err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(kc.Collector()); err != nil {
		t.Fatalf("register kernel collector: %v", err)
	}
	return gather(t, reg, srcKernel)
}

func gather(t *testing.T, g prometheus.Gatherer, source string) []family {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather %s metrics: %v", source, err)
	}
	out := make([]family, 0, len(mfs))
	for _, mf := range mfs {
		out = append(out, family{source, mf})
	}
	return out
}

// loadgenFamilies scrapes the metrics a short bench run serves at Config.MetricsAddr. loadgen
// builds its metrics internally (no exported constructor or collector), so the only way to see
// them is the way Prometheus does: over HTTP while a run is in progress.
func loadgenFamilies(t *testing.T) []family {
	t.Helper()
	_, addr := startServer(t, server.Config{})
	metricsAddr := freePort(t)

	cfg := loadgen.Defaults()
	cfg.Server = addr
	cfg.Proto = "tcp"
	cfg.Rate = 2000
	cfg.Conns = 2
	cfg.Keys = 100
	cfg.Warmup = 0
	cfg.Duration = 3 * time.Second
	cfg.Seed = 1
	cfg.MetricsAddr = metricsAddr

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		rep *loadgen.Report
		err error
	}
	runDone := make(chan result, 1)
	go func() {
		rep, err := loadgen.Run(ctx, cfg, nil)
		runDone <- result{rep, err}
	}()

	// Scrape until every class has answered at least once (the families exist from the start;
	// waiting for samples also proves the run is live), or the run ends.
	hc := &http.Client{Timeout: 2 * time.Second}
	var last map[string]*dto.MetricFamily
	var lastErr error
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case r := <-runDone:
			t.Fatalf("bench ended before its metrics were scraped (report %v, error %v); last scrape: %v", r.rep != nil, r.err, lastErr)
		default:
		}
		last, lastErr = scrape(hc, "http://"+metricsAddr+"/metrics")
		if lastErr == nil && benchAnswered(last) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if r := <-runDone; r.err != nil {
		t.Fatalf("bench run: %v", r.err)
	}
	if lastErr != nil || !benchAnswered(last) {
		t.Fatalf("no bench metrics with answered requests scraped: %v", lastErr)
	}
	out := make([]family, 0, len(last))
	for _, mf := range last {
		out = append(out, family{srcLoadgen, mf})
	}
	return out
}

// benchAnswered reports whether the scraped bench metrics count some answered requests.
func benchAnswered(mfs map[string]*dto.MetricFamily) bool {
	mf, ok := mfs["xdpcache_bench_requests_total"]
	if !ok {
		return false
	}
	var n float64
	for _, m := range mf.GetMetric() {
		n += m.GetCounter().GetValue()
	}
	return n > 0
}

func scrape(hc *http.Client, url string) (map[string]*dto.MetricFamily, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return mfs, nil
}

// freePort returns a loopback address no one listens on right now. loadgen listens itself, so
// there is a short window in which another process could take the port; tests are on loopback.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return addr
}

// allFamilies gathers every source once per test binary: the bench run takes seconds.
var (
	allOnce     sync.Once
	allServer   []family
	allLoadgen  []family
	allFailures []string
)

func commonFamilies(t *testing.T) []family {
	t.Helper()
	allOnce.Do(func() {
		// Run in a throwaway subtest-free way: failures are recorded and replayed per caller.
		ok := t.Run("gather", func(t *testing.T) {
			allServer = serverFamilies(t)
			allLoadgen = loadgenFamilies(t)
		})
		if !ok {
			allFailures = append(allFailures, "gathering server and loadgen metrics failed (see the gather subtest)")
		}
	})
	if len(allFailures) > 0 {
		t.Fatal(strings.Join(allFailures, "; "))
	}
	out := append([]family{}, allServer...)
	return append(out, allLoadgen...)
}

func readGolden(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("read golden: %v (run as root: go test ./deploy/ -run TestMetricsGolden -update)", err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

// goldenNames maps each metric family name in the golden file to its type.
func goldenNames(t *testing.T) map[string]string {
	t.Helper()
	out := make(map[string]string)
	for _, l := range readGolden(t) {
		f := strings.Fields(l)
		if len(f) != 4 {
			t.Fatalf("golden line %q: want NAME TYPE SOURCE LABELS", l)
		}
		out[f[0]] = f[1]
	}
	return out
}

func lines(fams []family) []string {
	out := make([]string, 0, len(fams))
	for _, f := range fams {
		out = append(out, f.line())
	}
	sort.Strings(out)
	return out
}

// TestMetricsGolden compares the metric families the server, the kernel collector and the load
// generator export (name, type, source) with testdata/metrics.golden. A renamed or retyped metric
// breaks dashboards and alerts; this test makes it a deliberate change.
func TestMetricsGolden(t *testing.T) {
	fams := commonFamilies(t)
	var golden []string
	if !*update {
		golden = readGolden(t)
		// Compare what needs no privilege first, so that a non-root run still checks most of it.
		var wantCommon []string
		for _, l := range golden {
			if f := strings.Fields(l); len(f) != 4 || f[2] != srcKernel {
				wantCommon = append(wantCommon, l)
			}
		}
		diffLines(t, "server and loadgen", lines(fams), wantCommon)
	}

	fams = append(fams, kernelFamilies(t)...)
	got := lines(fams)
	if *update {
		var b strings.Builder
		b.WriteString("# Metric families xdpcache exports: NAME TYPE SOURCE (server, kernel, loadgen) LABELS.\n")
		b.WriteString("# Generated as root by: go test ./deploy/ -run TestMetricsGolden -update\n")
		for _, l := range got {
			b.WriteString(l + "\n")
		}
		if err := os.MkdirAll(filepath.Dir(goldenPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath, []byte(b.String()), 0o644); err != nil {
			t.Fatalf("write golden: %v", err)
		}
		t.Logf("wrote %s with %d families", goldenPath, len(got))
		return
	}
	diffLines(t, "all sources", got, golden)
}

func diffLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	gs, ws := toSet(got), toSet(want)
	var missing, extra []string
	for _, w := range want {
		if !gs[w] {
			missing = append(missing, w)
		}
	}
	for _, g := range got {
		if !ws[g] {
			extra = append(extra, g)
		}
	}
	if len(missing)+len(extra) > 0 {
		t.Errorf("%s metrics differ from %s (if intended, as root: go test ./deploy/ -run TestMetricsGolden -update)\n  in golden, not exported: %q\n  exported, not in golden: %q",
			what, goldenPath, missing, extra)
	}
}

func toSet(ss []string) map[string]bool {
	m := make(map[string]bool, len(ss))
	for _, s := range ss {
		m[s] = true
	}
	return m
}
