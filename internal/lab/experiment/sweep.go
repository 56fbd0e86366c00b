package experiment

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/xdpcache/xdpcache/internal/lab"
)

// sweepPoint is one (theta, cache size) run.
type sweepPoint struct {
	Theta        float64 `json:"theta"`
	CachePercent float64 `json:"cache_percent"` // kernel cache entries as a share of the key space
	Entries      int     `json:"entries"`
	KernelShare  float64 `json:"kernel_share"`
	HitRatio     float64 `json:"hit_ratio"`
	Achieved     float64 `json:"achieved_rate"`
	Timeouts     uint64  `json:"timeouts"`
	// The kernel cache's churn over the run, warmup included (the server's stats): how many
	// entries went in, how many live ones were dropped for others, how many new keys admission
	// kept out.
	Fills             uint64 `json:"kernel_fills"`
	FillsSkipped      uint64 `json:"kernel_fills_skipped"`
	Evictions         uint64 `json:"kernel_evictions"`
	AdmissionsRefused uint64 `json:"kernel_admissions_refused"`
}

// runSweep is experiment 4: kernel share against kernel cache size and Zipf skew; one PNG with a
// line per theta, and the points as CSV and JSON.
func runSweep(ctx context.Context, c *common, args []string) error {
	fs := c.flags("sweep")
	thetas := fs.String("thetas", env("THETAS", "0.6 0.8 0.99 1.2"), "Zipf exponents (env THETAS)")
	percents := fs.String("cache-percents", env("CACHE_PERCENTS", "1 5 10 25 100"), "kernel cache entries, % of the key space (env CACHE_PERCENTS)")
	keys := fs.Int("keys", envInt("KEYS", 10000), "key space (env KEYS)")
	rate := fs.Int("rate", envInt("RATE", 20000), "offered GETs/s, open loop (env RATE)")
	duration := fs.Duration("duration", envDuration("DURATION", 4*time.Second), "measured window per point (env DURATION)")
	warmup := fs.Duration("warmup", envDuration("WARMUP", 3*time.Second), "least warmup per point (env WARMUP)")
	settle := fs.Float64("settle", envFloat("SETTLE", 0.01), "bench --warmup-settle (env SETTLE)")
	warmupMax := fs.Duration("warmup-max", envDuration("WARMUP_MAX", 15*time.Second), "bench --warmup-max (env WARMUP_MAX)")
	admission := fs.String("admission", env("ADMISSION", "frequency"), "serve --admission (env ADMISSION)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	ths, err := floats(*thetas)
	if err != nil {
		return err
	}
	pcs, err := floats(*percents)
	if err != nil {
		return err
	}
	lb, dir, err := c.start("sweep")
	if err != nil {
		return err
	}
	defer lb.Close()
	var pts []sweepPoint
	for _, th := range ths {
		for _, pc := range pcs {
			entries := max(1, int(float64(*keys)*pc/100+0.5))
			sub := filepath.Join(dir, fmt.Sprintf("theta-%g-cache-%g", th, pc))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", sub, err)
			}
			srv, err := lb.Serve(ctx, sub, true, "--admission", *admission, "--kernel-cache-entries", strconv.Itoa(entries))
			if err != nil {
				return err
			}
			rep, err := lb.Bench(ctx, filepath.Join(sub, "bench"), "--rate", strconv.Itoa(*rate),
				"--duration", duration.String(), "--warmup", warmup.String(),
				"--warmup-settle", strconv.FormatFloat(*settle, 'g', -1, 64), "--warmup-max", warmupMax.String(),
				"--keys", strconv.Itoa(*keys), "--key-dist", "zipf", "--zipf-theta", strconv.FormatFloat(th, 'g', -1, 64),
				"--key-scramble", "--get-ratio", "1", "--value-size", "32", "--kernel-dscp", strconv.Itoa(lab.ReplyDSCP))
			var stats map[string]string
			if err == nil {
				stats, err = lb.Stats()
			}
			srv.Stop()
			if err != nil {
				return err
			}
			p := sweepPoint{Theta: th, CachePercent: pc, Entries: entries, KernelShare: rep.KernelShare,
				HitRatio: rep.HitRatio, Achieved: rep.AchievedRate, Timeouts: rep.Timeouts,
				Fills: lab.StatUint(stats, "kernel_fills"), FillsSkipped: lab.StatUint(stats, "kernel_fills_skipped"),
				Evictions:         lab.StatUint(stats, "kernel_evictions"),
				AdmissionsRefused: lab.StatUint(stats, "kernel_admissions_refused")}
			pts = append(pts, p)
			c.progress("sweep: theta %g, cache %g%% (%d entries): kernel share %.1f%%; kernel cache %d fills, %d evictions, %d refused",
				th, pc, entries, 100*p.KernelShare, p.Fills, p.Evictions, p.AdmissionsRefused)
		}
	}
	if err := writeSweep(dir, pts); err != nil {
		return err
	}
	if err := plotSweep(filepath.Join(dir, "sweep.png"), pts, *keys, *admission); err != nil {
		return err
	}
	return c.summary(dir, sweepSummary(pts, ths, pcs, *keys, *rate, *admission, dir))
}

func floats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Fields(s) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: number %q", ErrUsage, f)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty list", ErrUsage)
	}
	return out, nil
}

func writeSweep(dir string, pts []sweepPoint) error {
	b, _ := json.MarshalIndent(pts, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "points.json"), b, 0o644); err != nil {
		return fmt.Errorf("write points: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, "points.csv"))
	if err != nil {
		return fmt.Errorf("write points: %w", err)
	}
	w := csv.NewWriter(f)
	w.Write([]string{"theta", "cache_percent", "entries", "kernel_share", "hit_ratio", "achieved_rate", "timeouts",
		"kernel_fills", "kernel_evictions", "kernel_admissions_refused", "kernel_fills_skipped"})
	for _, p := range pts {
		w.Write([]string{strconv.FormatFloat(p.Theta, 'g', -1, 64), strconv.FormatFloat(p.CachePercent, 'g', -1, 64),
			strconv.Itoa(p.Entries), strconv.FormatFloat(p.KernelShare, 'f', 4, 64), strconv.FormatFloat(p.HitRatio, 'f', 4, 64),
			strconv.FormatFloat(p.Achieved, 'f', 0, 64), strconv.FormatUint(p.Timeouts, 10),
			strconv.FormatUint(p.Fills, 10), strconv.FormatUint(p.Evictions, 10), strconv.FormatUint(p.AdmissionsRefused, 10),
			strconv.FormatUint(p.FillsSkipped, 10)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write points: %w", err)
	}
	return f.Close()
}

// plotSweep draws kernel share (%) against cache size (% of keys, log axis), one line per theta.
func plotSweep(path string, pts []sweepPoint, keys int, admission string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Kernel share of GETs: %d keys, Zipf, %s admission", keys, admission)
	p.X.Label.Text = "kernel cache entries (% of key space)"
	p.Y.Label.Text = "kernel share of GETs (%)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 100
	var thetas []float64
	series := map[float64]plotter.XYs{}
	for _, pt := range pts {
		if _, ok := series[pt.Theta]; !ok {
			thetas = append(thetas, pt.Theta)
		}
		series[pt.Theta] = append(series[pt.Theta], plotter.XY{X: pt.CachePercent, Y: 100 * pt.KernelShare})
	}
	for i, th := range thetas {
		l, s, err := plotter.NewLinePoints(series[th])
		if err != nil {
			return fmt.Errorf("plot sweep: %w", err)
		}
		col := plotutil.Color(i)
		l.Color, s.Color = col, col
		l.Width = vg.Points(1.5)
		s.Shape = plotutil.Shape(i)
		p.Add(l, s)
		p.Legend.Add(fmt.Sprintf("theta %g", th), l, s)
	}
	p.Legend.Top, p.Legend.Left = true, true
	g := plotter.NewGrid()
	g.Vertical.Color = color.Gray{Y: 220}
	g.Horizontal.Color = color.Gray{Y: 220}
	p.Add(g)
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}

func sweepSummary(pts []sweepPoint, ths, pcs []float64, keys, rate int, admission, dir string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "sweep: kernel share of GETs (%%), %d keys (Zipf, scrambled), %d GETs/s, %s admission; rows theta, columns kernel cache %% of keys; results %s (sweep.png, points.csv)\n",
		keys, rate, admission, dir)
	fmt.Fprintf(&sb, "%-6s", "theta")
	for _, pc := range pcs {
		fmt.Fprintf(&sb, " %7s", strconv.FormatFloat(pc, 'g', -1, 64)+"%")
	}
	sb.WriteString("\n")
	for _, th := range ths {
		fmt.Fprintf(&sb, "%-6g", th)
		for _, pc := range pcs {
			v := "-"
			for _, p := range pts {
				if p.Theta == th && p.CachePercent == pc {
					v = strconv.FormatFloat(100*p.KernelShare, 'f', 1, 64)
				}
			}
			fmt.Fprintf(&sb, " %7s", v)
		}
		sb.WriteString("\n")
	}
	return sb.String()
}
