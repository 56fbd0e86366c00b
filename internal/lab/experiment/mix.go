package experiment

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/xdpcache/xdpcache/internal/lab"
)

// mixRun is one run of the mix experiment: both benches, one kernel setting.
type mixRun struct {
	Round  int     `json:"round"`
	Kernel bool    `json:"kernel"`
	Hot    *Report `json:"hot"`  // kernel-answerable GETs
	User   *Report `json:"user"` // GETs that must reach userspace
}

// runMix is experiment 1: a fixed mix of kernel-answerable GETs and GETs that must reach
// userspace, with the kernel path on and off; the userspace percentiles both ways and their ratio.
func runMix(ctx context.Context, c *common, args []string) error {
	fs := c.flags("mix")
	hotRate := fs.Int("hot-rate", envInt("HOT_RATE", 20000), "GETs/s the kernel can answer, open loop (env HOT_RATE)")
	userRate := fs.Int("user-rate", envInt("USER_RATE", 2000), "GETs/s that must reach userspace (env USER_RATE)")
	userKind := fs.String("user-kind", env("USER_KIND", "miss"), "userspace GETs: miss (keys never set) or large (values over one datagram) (env USER_KIND)")
	hotKeys := fs.Int("hot-keys", envInt("HOT_KEYS", 1000), "hot key space, uniform; all of it fits the kernel cache (env HOT_KEYS)")
	duration := fs.Duration("duration", envDuration("DURATION", 10*time.Second), "measured window per run (env DURATION)")
	warmup := fs.Duration("warmup", envDuration("WARMUP", 3*time.Second), "warmup per run (env WARMUP)")
	rounds := fs.Int("rounds", envInt("ROUNDS", 3), "rounds; each runs kernel off and on, alternating which goes first (env ROUNDS)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	userArgs := []string{"--key-size", "24", "--keys", "10000", "--key-dist", "uniform", "--get-ratio", "1"}
	userClass := "user_miss"
	switch *userKind {
	case "miss":
		// Keys of another length than the hot ones, never set: every GET misses and only the
		// server can say END.
		userArgs = append(userArgs, "--load=false")
	case "large":
		// 1,800-byte values take two datagrams (and stay under serve's default 64x amplification
		// cap for a 34-byte request); the kernel passes multi-datagram replies.
		userArgs = append(userArgs, "--value-size", "1800")
		userClass = "user_hit"
	default:
		return fmt.Errorf("%w: --user-kind %q (miss or large)", ErrUsage, *userKind)
	}
	lb, dir, err := c.start("mix")
	if err != nil {
		return err
	}
	defer lb.Close()

	var runs []mixRun
	for r := 1; r <= *rounds; r++ {
		order := []bool{false, true}
		if r%2 == 0 {
			order = []bool{true, false}
		}
		for _, kernel := range order {
			name := fmt.Sprintf("round%d-kernel-%s", r, onOff(kernel))
			sub := filepath.Join(dir, name)
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", sub, err)
			}
			c.progress("mix: %s", name)
			srv, err := lb.Serve(ctx, sub, kernel, "--admission", "always")
			if err != nil {
				return err
			}
			common := []string{"--duration", duration.String(), "--warmup", warmup.String(),
				"--kernel-dscp", strconv.Itoa(lab.ReplyDSCP), "--conns", "1"}
			hotCmd, err := lb.BenchCmd(filepath.Join(sub, "hot"), append([]string{"--rate", strconv.Itoa(*hotRate),
				"--keys", strconv.Itoa(*hotKeys), "--key-dist", "uniform", "--get-ratio", "1", "--value-size", "32"}, common...)...)
			if err != nil {
				srv.Stop()
				return err
			}
			userCmd, err := lb.BenchCmd(filepath.Join(sub, "user"), append(append([]string{"--rate", strconv.Itoa(*userRate)}, userArgs...), common...)...)
			if err != nil {
				hotCmd.Process.Kill()
				hotCmd.Wait()
				srv.Stop()
				return err
			}
			hot, herr := waitBench(ctx, hotCmd, filepath.Join(sub, "hot"))
			user, uerr := waitBench(ctx, userCmd, filepath.Join(sub, "user"))
			srv.Stop()
			if herr != nil {
				return herr
			}
			if uerr != nil {
				return uerr
			}
			runs = append(runs, mixRun{Round: r, Kernel: kernel, Hot: hot, User: user})
			u := user.Classes[userClass]
			c.progress("mix: %s: hot %.0f/s kernel share %.1f%%; userspace %s p50 %.1f µs p99 %.1f µs",
				name, hot.AchievedRate, 100*hot.KernelShare, userClass, u.P50Us, u.P99Us)
		}
	}
	b, _ := json.MarshalIndent(runs, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "runs.json"), b, 0o644); err != nil {
		return fmt.Errorf("write runs: %w", err)
	}
	return c.summary(dir, mixSummary(runs, userClass, *hotRate, *userRate, *userKind, dir))
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// mixSummary is the experiment's table: medians over rounds of each figure, off and on, and on/off.
func mixSummary(runs []mixRun, userClass string, hotRate, userRate int, kind, dir string) string {
	type fig struct {
		name string
		get  func(r mixRun) float64
	}
	figs := []fig{
		{"userspace p50 µs", func(r mixRun) float64 { return r.User.Classes[userClass].P50Us }},
		{"userspace p90 µs", func(r mixRun) float64 { return r.User.Classes[userClass].P90Us }},
		{"userspace p99 µs", func(r mixRun) float64 { return r.User.Classes[userClass].P99Us }},
		{"userspace p99.9 µs", func(r mixRun) float64 { return r.User.Classes[userClass].P999Us }},
		{"hot GETs p50 µs (any class)", func(r mixRun) float64 { return hotP50(r.Hot) }},
		{"hot kernel share %", func(r mixRun) float64 { return 100 * r.Hot.KernelShare }},
		{"userspace kernel share %", func(r mixRun) float64 { return 100 * r.User.KernelShare }},
		{"hot achieved req/s", func(r mixRun) float64 { return r.Hot.AchievedRate }},
		{"userspace achieved req/s", func(r mixRun) float64 { return r.User.AchievedRate }},
		{"timeouts (both benches)", func(r mixRun) float64 { return float64(r.Hot.Timeouts + r.User.Timeouts) }},
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "mix: %d GETs/s the kernel can answer + %d GETs/s that must reach userspace (%s, class %s), median of %d round(s); results %s\n",
		hotRate, userRate, kind, userClass, len(runs)/2, dir)
	fmt.Fprintf(&sb, "%-30s %12s %12s %8s\n", "", "kernel off", "kernel on", "on/off")
	for _, f := range figs {
		var off, on []float64
		for _, r := range runs {
			if r.Kernel {
				on = append(on, f.get(r))
			} else {
				off = append(off, f.get(r))
			}
		}
		mOff, mOn := median(off), median(on)
		fmt.Fprintf(&sb, "%-30s %12.1f %12.1f %8s\n", f.name, mOff, mOn, fmtRatio(ratio(mOn, mOff)))
	}
	var warn []string
	for _, r := range runs {
		for _, w := range append(append([]string{}, r.Hot.Warnings...), r.User.Warnings...) {
			warn = append(warn, fmt.Sprintf("round %d kernel %s: %s", r.Round, onOff(r.Kernel), w))
		}
	}
	for _, w := range warn {
		fmt.Fprintf(&sb, "WARNING %s\n", w)
	}
	fmt.Fprintf(&sb, "(published, CoNEXT'25 with BMC: userspace median +51%%, 40.6 -> 61.5 µs, p99 +11%%)\n")
	return sb.String()
}

// hotP50 is the median of the hot GETs whoever answered: kernel hits when on, user hits when off.
func hotP50(r *Report) float64 {
	k, u := r.Classes["kernel_hit"], r.Classes["user_hit"]
	if k.Count >= u.Count {
		return k.P50Us
	}
	return u.P50Us
}
