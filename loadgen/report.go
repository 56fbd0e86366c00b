package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Report is the result of a run. The exported fields are what --json writes.
type Report struct {
	// OfferedRate is the schedule's requests per second in the window (sent or not); in closed
	// loop, what was sent.
	OfferedRate float64 `json:"offered_rate"`
	// AchievedRate is answered requests (every class, not timeouts or errors) per second.
	AchievedRate float64 `json:"achieved_rate"`
	DurationS    float64 `json:"duration_s"`
	// HitRatio is GET hits (kernel and user) over answered GETs.
	HitRatio float64 `json:"hit_ratio"`
	// KernelShare is kernel hits over answered GETs.
	KernelShare float64 `json:"kernel_share"`
	Timeouts    uint64  `json:"timeouts"`
	Errors      uint64  `json:"errors"`
	Interrupted bool    `json:"interrupted"`
	// Classes is keyed kernel_hit, user_hit, user_miss, set; every key is always present.
	Classes  map[string]ClassStats `json:"classes"`
	Schedule ScheduleStats         `json:"schedule"`
	// Warnings says when the numbers describe the generator rather than the server.
	Warnings []string `json:"warnings"`
	Config   Config   `json:"config"`

	hists [numClasses]*hdrhistogram.Histogram
}

// ClassStats are one class's count, rate, share of answered requests and latency percentiles in
// microseconds, measured from the intended send time.
type ClassStats struct {
	Count  uint64  `json:"count"`
	Rate   float64 `json:"rate"`
	Share  float64 `json:"share"`
	MeanUs float64 `json:"mean_us"`
	P50Us  float64 `json:"p50_us"`
	P90Us  float64 `json:"p90_us"`
	P99Us  float64 `json:"p99_us"`
	P999Us float64 `json:"p999_us"`
	MaxUs  float64 `json:"max_us"`
}

// ScheduleStats say how well the generator kept its open-loop schedule: the lag from intended to
// actual send time, and the requests due in the window that it never sent.
type ScheduleStats struct {
	LagP50Us float64 `json:"lag_p50_us"`
	LagP99Us float64 `json:"lag_p99_us"`
	LagMaxUs float64 `json:"lag_max_us"`
	Unsent   uint64  `json:"unsent"`
	// Behind is true when the lag or the unsent requests exceed the limits (see Warnings).
	Behind bool `json:"behind"`
}

func newReport(cfg Config) *Report {
	r := &Report{Config: cfg, Classes: map[string]ClassStats{}, Warnings: []string{}}
	for c := range r.hists {
		r.hists[c] = newHist()
	}
	return r
}

// finish merges the workers' measurements into r.
func (r *Report) finish(workers []*worker, window time.Duration) {
	total := newMeasurement()
	lag := newHist()
	var offered, unsent uint64
	for _, w := range workers {
		total.merge(w.meas)
		total.timeouts += w.measuredTimeouts.Load()
		total.errors += w.measuredErrors.Load()
		lag.Merge(w.lag)
		offered += w.offered
		unsent += w.unsent
	}
	r.hists = total.hist
	r.DurationS = window.Seconds()
	r.Timeouts, r.Errors = total.timeouts, total.errors
	var answered, gets, hits uint64
	for _, c := range Classes {
		answered += uint64(r.hists[c].TotalCount())
	}
	gets = uint64(r.hists[KernelHit].TotalCount() + r.hists[UserHit].TotalCount() + r.hists[UserMiss].TotalCount())
	hits = uint64(r.hists[KernelHit].TotalCount() + r.hists[UserHit].TotalCount())
	for _, c := range Classes {
		r.Classes[c.String()] = classStats(r.hists[c], answered, r.DurationS)
	}
	if gets > 0 {
		r.HitRatio = float64(hits) / float64(gets)
		r.KernelShare = float64(r.hists[KernelHit].TotalCount()) / float64(gets)
	}
	if r.DurationS > 0 {
		r.OfferedRate = float64(offered+unsent) / r.DurationS
		r.AchievedRate = float64(answered) / r.DurationS
	}
	r.Schedule = ScheduleStats{Unsent: unsent}
	if lag.TotalCount() > 0 {
		r.Schedule.LagP50Us = us(lag.ValueAtQuantile(50))
		r.Schedule.LagP99Us = us(lag.ValueAtQuantile(99))
		r.Schedule.LagMaxUs = us(lag.Max())
	}
	limit := r.Config.MaxLag
	if r.Config.Rate > 0 && r.Schedule.LagP99Us > float64(limit.Microseconds()) {
		r.Schedule.Behind = true
		r.Warnings = append(r.Warnings, fmt.Sprintf(
			"generator fell behind its schedule: p99 send lag %.0f µs over the %s limit; latencies include the generator's own delay (add --conns or cores, or lower --rate)",
			r.Schedule.LagP99Us, limit))
	}
	if all := offered + unsent; all > 0 && float64(unsent) > 0.001*float64(all) {
		r.Schedule.Behind = true
		r.Warnings = append(r.Warnings, fmt.Sprintf(
			"generator could not send %d of %d scheduled requests (%.1f%%): its own ceiling, not the server's",
			unsent, all, 100*float64(unsent)/float64(all)))
	}
	if c := r.Config; c.Proto == "udp" && c.Rate > 0 && c.Rate/float64(c.Conns)*c.Timeout.Seconds() > 1<<16 {
		r.Warnings = append(r.Warnings, fmt.Sprintf(
			"%.0f requests per socket can be in flight within the timeout, over the 65536 UDP request ids: ids are recycled and the oldest counted as timeouts (add --conns or lower --timeout)",
			c.Rate/float64(c.Conns)*c.Timeout.Seconds()))
	}
	if total.overflow > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%d latencies beyond 100 s recorded as 100 s", total.overflow))
	}
	if r.Interrupted {
		r.Warnings = append(r.Warnings, "interrupted: the window is shorter than configured")
	}
}

func classStats(h *hdrhistogram.Histogram, answered uint64, secs float64) ClassStats {
	n := uint64(h.TotalCount())
	cs := ClassStats{Count: n}
	if n == 0 {
		return cs
	}
	if answered > 0 {
		cs.Share = float64(n) / float64(answered)
	}
	if secs > 0 {
		cs.Rate = float64(n) / secs
	}
	cs.MeanUs = h.Mean() / 1e3
	cs.P50Us = us(h.ValueAtQuantile(50))
	cs.P90Us = us(h.ValueAtQuantile(90))
	cs.P99Us = us(h.ValueAtQuantile(99))
	cs.P999Us = us(h.ValueAtQuantile(99.9))
	cs.MaxUs = us(h.Max())
	return cs
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

// WriteTable writes the human-readable summary.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "class\trate/s\tshare\tp50 µs\tp90 µs\tp99 µs\tp99.9 µs\tmax µs\t\n")
	for _, c := range Classes {
		s := r.Classes[c.String()]
		fmt.Fprintf(tw, "%s\t%.0f\t%.1f%%\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n",
			c, s.Rate, 100*s.Share, s.P50Us, s.P90Us, s.P99Us, s.P999Us, s.MaxUs)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	mode := fmt.Sprintf("open loop, Poisson at %.0f req/s", r.Config.Rate)
	if r.Config.Rate == 0 {
		mode = fmt.Sprintf("closed loop, %d outstanding", r.Config.Concurrency)
	}
	_, err := fmt.Fprintf(w, "\n%s over %s to %s, %d conns, %.1f s measured\n"+
		"offered %.0f req/s, achieved %.0f req/s; hit ratio %.1f%%, kernel share %.1f%% of GETs\n"+
		"timeouts %d, errors %d; send lag p50 %.1f µs, p99 %.1f µs, max %.1f µs; unsent %d\n",
		mode, r.Config.Proto, r.Config.Server, r.Config.Conns, r.DurationS,
		r.OfferedRate, r.AchievedRate, 100*r.HitRatio, 100*r.KernelShare,
		r.Timeouts, r.Errors, r.Schedule.LagP50Us, r.Schedule.LagP99Us, r.Schedule.LagMaxUs, r.Schedule.Unsent)
	if err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	if r.Interrupted {
		fmt.Fprintln(w, "INTERRUPTED: partial results")
	}
	for _, warn := range r.Warnings {
		if _, err := fmt.Fprintf(w, "WARNING: %s\n", warn); err != nil {
			return fmt.Errorf("write table: %w", err)
		}
	}
	return nil
}

// WriteJSON writes the report as JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteHDR writes one HdrHistogram percentile distribution file per class, named
// prefix + class + ".hgrm", values in microseconds (HdrHistogram's plotter reads them).
func (r *Report) WriteHDR(prefix string) error {
	for _, c := range Classes {
		path := prefix + c.String() + ".hgrm"
		if dir := filepath.Dir(path); dir != "." {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("create directory for %s: %w", path, err)
			}
		}
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("create %s: %w", path, err)
		}
		if r.hists[c].TotalCount() > 0 {
			_, err = r.hists[c].PercentilesPrint(f, 5, 1e3)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}

// Histogram returns a copy of class c's latency histogram (nanoseconds).
func (r *Report) Histogram(c Class) *hdrhistogram.Histogram {
	if c < 0 || c >= numClasses || r.hists[c] == nil {
		return newHist()
	}
	return hdrhistogram.Import(r.hists[c].Export())
}
