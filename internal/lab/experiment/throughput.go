package experiment

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/xdpcache/xdpcache/internal/lab"
	"github.com/xdpcache/xdpcache/loadgen"
)

// The four answerers of the throughput experiment.
const (
	caseKernel    = "kernel"    // serve with the XDP program, every key in the kernel cache
	caseGo        = "go"        // serve alone
	caseMemcached = "memcached" // Debian's memcached -U, one worker thread
	caseEcho      = "echo"      // the bare XDP echo program: the ceiling of this client and machine
)

// tpRun is one closed-loop run against one answerer.
type tpRun struct {
	Round  int     `json:"round"`
	Case   string  `json:"case"`
	Report *Report `json:"report"`
}

// runThroughput is experiment 2: closed-loop GET hits at saturation against the kernel path, our
// server alone, memcached and the bare XDP echo program, in one run; rounds alternate the order.
func runThroughput(ctx context.Context, c *common, args []string) error {
	fs := c.flags("throughput")
	duration := fs.Duration("duration", envDuration("DURATION", 5*time.Second), "measured window per run (env DURATION)")
	warmup := fs.Duration("warmup", envDuration("WARMUP", 2*time.Second), "warmup per run (env WARMUP)")
	rounds := fs.Int("rounds", envInt("ROUNDS", 3), "rounds over the four cases (env ROUNDS)")
	keys := fs.Int("keys", envInt("KEYS", 1000), "key space, uniform, all hot (env KEYS)")
	conc := fs.Int("concurrency", envInt("CONCURRENCY", 128), "requests outstanding (env CONCURRENCY)")
	casesFlag := fs.String("cases", env("CASES", "kernel go memcached echo"), "which answerers (env CASES)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	cases := strings.Fields(*casesFlag)
	lb, dir, err := c.start("throughput")
	if err != nil {
		return err
	}
	defer lb.Close()

	bench := []string{"--rate", "0", "--concurrency", strconv.Itoa(*conc), "--duration", duration.String(),
		"--warmup", warmup.String(), "--keys", strconv.Itoa(*keys), "--key-dist", "uniform", "--get-ratio", "1",
		"--value-size", "32", "--kernel-dscp", strconv.Itoa(lab.ReplyDSCP)}
	var runs []tpRun
	for r := 1; r <= *rounds; r++ {
		order := cases
		if r%2 == 0 {
			order = reversed(cases)
		}
		for _, cs := range order {
			sub := filepath.Join(dir, fmt.Sprintf("round%d-%s", r, cs))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", sub, err)
			}
			stop, extra, err := startCase(ctx, lb, sub, cs)
			if err != nil {
				return err
			}
			rep, err := lb.Bench(ctx, filepath.Join(sub, "bench"), append(append([]string{}, bench...), extra...)...)
			stop.Close()
			if err != nil {
				return err
			}
			if rep.Errors > 0 {
				return fmt.Errorf("%s: %d errors in the bench report (%s)", cs, rep.Errors, sub)
			}
			runs = append(runs, tpRun{Round: r, Case: cs, Report: rep})
			c.progress("throughput: round %d %-9s %9.0f req/s, kernel share %5.1f%%, timeouts %d", r, cs, rep.AchievedRate, 100*rep.KernelShare, rep.Timeouts)
		}
	}
	b, _ := json.MarshalIndent(runs, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "runs.json"), b, 0o644); err != nil {
		return fmt.Errorf("write runs: %w", err)
	}
	return c.summary(dir, tpSummary(runs, cases, *conc, dir))
}

// startCase starts the answerer of one case; the Closer stops it. extra are bench flags it needs.
func startCase(ctx context.Context, lb *Lab, dir, cs string) (io.Closer, []string, error) {
	switch cs {
	case caseKernel:
		p, err := lb.Serve(ctx, dir, true, "--admission", "always")
		return procCloser{p}, nil, err
	case caseGo:
		p, err := lb.Serve(ctx, dir, false)
		return procCloser{p}, nil, err
	case caseMemcached:
		p, err := lb.Memcached(ctx, dir)
		return procCloser{p}, nil, err
	case caseEcho:
		l, err := lb.AttachEcho()
		// Nothing listens for TCP, so no load; every request comes back as it went.
		return l, []string{"--load=false", "--echo-replies"}, err
	}
	return nil, nil, fmt.Errorf("%w: unknown case %q", ErrUsage, cs)
}

type procCloser struct{ p *lab.Proc }

func (c procCloser) Close() error { c.p.Stop(); return nil }

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// tpSummary prints the median rate per case and the ratios the issue asks for.
func tpSummary(runs []tpRun, cases []string, conc int, dir string) string {
	rate := map[string]float64{}
	share := map[string]float64{}
	var sb strings.Builder
	fmt.Fprintf(&sb, "throughput: closed loop, %d outstanding, GET hits, 32-byte values; median of %d round(s); results %s\n",
		conc, len(runs)/max(len(cases), 1), dir)
	fmt.Fprintf(&sb, "%-10s %12s %12s %14s %10s\n", "case", "req/s", "p50 µs", "kernel share %", "timeouts")
	for _, cs := range cases {
		var rs, ks, p50, to []float64
		for _, r := range runs {
			if r.Case == cs {
				rs = append(rs, r.Report.AchievedRate)
				ks = append(ks, 100*r.Report.KernelShare)
				p50 = append(p50, anyP50(r.Report))
				to = append(to, float64(r.Report.Timeouts))
			}
		}
		rate[cs], share[cs] = median(rs), median(ks)
		fmt.Fprintf(&sb, "%-10s %12.0f %12.1f %14.1f %10.0f\n", cs, rate[cs], median(p50), share[cs], median(to))
	}
	for _, p := range [][2]string{{caseKernel, caseMemcached}, {caseKernel, caseGo}, {caseGo, caseMemcached},
		{caseKernel, caseEcho}, {caseEcho, caseMemcached}} {
		if _, ok := rate[p[0]]; !ok {
			continue
		}
		if _, ok := rate[p[1]]; !ok {
			continue
		}
		fmt.Fprintf(&sb, "%-10s / %-10s %s\n", p[0], p[1], fmtRatio(ratio(rate[p[0]], rate[p[1]])))
	}
	fmt.Fprintf(&sb, "(published: BMC 2.5x memcached on one core, 5.8x memcached with SO_REUSEPORT on eight)\n")
	return sb.String()
}

// anyP50 is the median of the class that answered most.
func anyP50(r *Report) float64 {
	var best loadgen.ClassStats
	for _, c := range r.Classes {
		if c.Count > best.Count {
			best = c
		}
	}
	return best.P50Us
}
