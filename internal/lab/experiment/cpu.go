package experiment

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/xdpcache/xdpcache/internal/lab"
)

// cpuSnap is everything read at one end of the sampling window.
type cpuSnap struct {
	at        time.Time
	gets      uint64 // cmd_get: every GET, kernel-served ones included for serve
	kernel    uint64 // kernel_get_hits (serve with XDP)
	proc      time.Duration
	napi      time.Duration // the server veth's NAPI threads
	core      CPUTimes      // the server CPU
	progTime  time.Duration // XDP program run time (BPF stats)
	progRuns  uint64
	hasKernel bool
}

// cpuResult is one case's figures per GET over the window.
type cpuResult struct {
	Round         int     `json:"round"`
	Case          string  `json:"case"`
	WindowS       float64 `json:"window_s"`
	Gets          uint64  `json:"gets"`
	KernelGets    uint64  `json:"kernel_gets"`
	ProcNsPerGet  float64 `json:"process_ns_per_userspace_get"` // server process CPU / GETs it answered
	NAPINsPerGet  float64 `json:"napi_ns_per_get"`              // server veth NAPI thread CPU / all GETs
	CoreNsPerGet  float64 `json:"core_busy_ns_per_get"`         // whole server core busy time / all GETs
	SoftirqNs     float64 `json:"core_softirq_ns_per_get"`
	XDPNsPerRun   float64 `json:"xdp_ns_per_run"`
	XDPNsPerHit   float64 `json:"xdp_ns_per_kernel_hit"`
	ProcCPUShare  float64 `json:"process_cpu_share"` // of one core
	NAPICPUShare  float64 `json:"napi_cpu_share"`
	BenchAchieved float64 `json:"bench_achieved_rate"`
	BenchTimeouts uint64  `json:"bench_timeouts"`
}

// runCPU is experiment 3: server CPU per GET hit at one open-loop rate, from /proc and from the
// kernel's BPF statistics, for the kernel path, our server alone and memcached.
func runCPU(ctx context.Context, c *common, args []string) error {
	fs := c.flags("cpu")
	rate := fs.Int("rate", envInt("RATE", 30000), "offered GETs/s, open loop, the same for every case (env RATE)")
	window := fs.Duration("duration", envDuration("DURATION", 8*time.Second), "sampling window per case (env DURATION)")
	keys := fs.Int("keys", envInt("KEYS", 1000), "key space, uniform, all hot (env KEYS)")
	valueSize := fs.Int("value-size", envInt("VALUE_SIZE", 32), "value bytes: replies over ~200 bytes more than their request are the TC program's on veth (env VALUE_SIZE)")
	casesFlag := fs.String("cases", env("CASES", "kernel go memcached"), "which servers (env CASES)")
	rounds := fs.Int("rounds", envInt("ROUNDS", 3), "rounds of every case, order alternating; the summary gives the median ratio (env ROUNDS)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	lb, dir, err := c.start("cpu")
	if err != nil {
		return err
	}
	defer lb.Close()
	cases := strings.Fields(*casesFlag)
	for _, cs := range cases {
		if cs == caseEcho {
			return fmt.Errorf("%w: cpu has no echo case (no server process)", ErrUsage)
		}
	}
	if *rounds < 1 {
		return fmt.Errorf("%w: rounds %d", ErrUsage, *rounds)
	}
	// The per-GET figures move a lot from one run to the next (cold caches, the other core's
	// load), so every case runs in each round, in alternating order, and the ratios are medians.
	var results []cpuResult
	for round := 1; round <= *rounds; round++ {
		order := slices.Clone(cases)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, cs := range order {
			sub := filepath.Join(dir, fmt.Sprintf("round%d-%s", round, cs))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", sub, err)
			}
			res, err := cpuCase(ctx, c, lb, sub, cs, *rate, *keys, *valueSize, *window)
			if err != nil {
				return err
			}
			res.Round = round
			results = append(results, *res)
		}
	}
	b, _ := json.MarshalIndent(results, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "cpu.json"), b, 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return c.summary(dir, cpuSummary(results, *rate, *valueSize, dir))
}

func cpuCase(ctx context.Context, c *common, lb *Lab, dir, cs string, rate, keys, valueSize int, window time.Duration) (*cpuResult, error) {
	stop, _, err := startCase(ctx, lb, dir, cs)
	if err != nil {
		return nil, err
	}
	defer stop.Close()
	var pid int
	if pc, ok := stop.(procCloser); ok {
		pid = pc.p.Pid()
	}
	// The bench outlasts the window on both sides; the window is placed by the server's own
	// GET counter, not by guessing how long the load phase takes.
	stem := filepath.Join(dir, "bench")
	cmd, err := lb.BenchCmd(stem, "--rate", strconv.Itoa(rate), "--duration", (window + 4*time.Second).String(),
		"--warmup", "1s", "--keys", strconv.Itoa(keys), "--key-dist", "uniform", "--get-ratio", "1",
		"--value-size", strconv.Itoa(valueSize), "--kernel-dscp", strconv.Itoa(lab.ReplyDSCP))
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*cpuResult, error) {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := lb.Stats()
		if err == nil && lab.StatUint(st, "cmd_get") > 0 {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("%s: no GETs reached the server within 30 s", cs))
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // past the warmup and the kernel cache's fill
	a, err := snapCPU(lb, cs, pid)
	if err != nil {
		return fail(err)
	}
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	b, err := snapCPU(lb, cs, pid)
	if err != nil {
		return fail(err)
	}
	rep, err := waitBench(ctx, cmd, stem)
	if err != nil {
		return nil, err
	}
	res := cpuFigures(cs, a, b)
	res.BenchAchieved, res.BenchTimeouts = rep.AchievedRate, rep.Timeouts
	c.progress("cpu: %-9s %d GETs in %.1f s (%d by the kernel); process %.0f ns per userspace GET, NAPI %.0f ns per GET, XDP %.0f ns per run",
		cs, res.Gets, res.WindowS, res.KernelGets, res.ProcNsPerGet, res.NAPINsPerGet, res.XDPNsPerRun)
	return &res, nil
}

func snapCPU(lb *Lab, cs string, pid int) (cpuSnap, error) {
	var s cpuSnap
	st, err := lb.Stats()
	if err != nil {
		return s, err
	}
	s.at = time.Now()
	s.gets, s.kernel = lab.StatUint(st, "cmd_get"), lab.StatUint(st, "kernel_get_hits")
	if s.proc, err = ProcCPU(pid); err != nil {
		return s, err
	}
	pids, err := lb.ServerNAPI()
	if err != nil {
		return s, err
	}
	if len(pids) == 0 {
		return s, fmt.Errorf("cpu: no NAPI thread for the server veth")
	}
	for _, p := range pids {
		t, err := ProcCPU(p)
		if err != nil {
			return s, err
		}
		s.napi += t
	}
	if s.core, err = cpuTimes(lb.ServerCPU); err != nil {
		return s, err
	}
	if cs == caseKernel {
		prog, err := lb.ServerProgram()
		if err != nil {
			return s, err
		}
		defer prog.Close()
		ps, err := prog.Stats()
		if err != nil {
			return s, fmt.Errorf("read XDP program stats: %w", err)
		}
		s.progTime, s.progRuns, s.hasKernel = ps.Runtime, ps.RunCount, true
	}
	return s, nil
}

// cpuFigures turns two snapshots into per-GET costs.
func cpuFigures(cs string, a, b cpuSnap) cpuResult {
	gets := b.gets - a.gets
	kern := b.kernel - a.kernel
	win := b.at.Sub(a.at).Seconds()
	core := b.core.Sub(a.core)
	r := cpuResult{Case: cs, WindowS: win, Gets: gets, KernelGets: kern,
		ProcNsPerGet: ratio(float64(b.proc-a.proc), float64(gets-kern)),
		NAPINsPerGet: ratio(float64(b.napi-a.napi), float64(gets)),
		CoreNsPerGet: ratio(float64(core.Busy()), float64(gets)),
		SoftirqNs:    ratio(float64(core.SoftIRQ), float64(gets)),
		ProcCPUShare: ratio((b.proc - a.proc).Seconds(), win),
		NAPICPUShare: ratio((b.napi - a.napi).Seconds(), win),
	}
	if b.hasKernel {
		r.XDPNsPerRun = ratio(float64(b.progTime-a.progTime), float64(b.progRuns-a.progRuns))
		r.XDPNsPerHit = ratio(float64(b.progTime-a.progTime), float64(kern))
	}
	return r
}

// cpuSummary prints each round's table and ratios, then the median ratios over the rounds.
func cpuSummary(rs []cpuResult, rate, valueSize int, dir string) string {
	var sb strings.Builder
	byRound := map[int][]cpuResult{}
	var rounds []int
	for _, r := range rs {
		if _, ok := byRound[r.Round]; !ok {
			rounds = append(rounds, r.Round)
		}
		byRound[r.Round] = append(byRound[r.Round], r)
	}
	perBase := map[string][]float64{}
	for _, n := range rounds {
		text, ratios := cpuRoundSummary(byRound[n], rate, valueSize, dir)
		fmt.Fprintf(&sb, "round %d:\n%s", n, text)
		for base, r := range ratios {
			perBase[base] = append(perBase[base], r)
		}
	}
	for _, base := range []string{caseMemcached, caseGo} {
		xs := perBase[base]
		if len(xs) == 0 {
			continue
		}
		parts := make([]string, len(xs))
		for i, x := range xs {
			parts[i] = fmtRatio(x)
		}
		fmt.Fprintf(&sb, "%s process CPU per GET / XDP program time per kernel hit, median of %d round(s): %s (rounds: %s; target >= 20)\n",
			base, len(xs), fmtRatio(median(xs)), strings.Join(parts, ", "))
	}
	return sb.String()
}

// cpuRoundSummary is one round's table and its process/XDP ratio per baseline.
func cpuRoundSummary(rs []cpuResult, rate, valueSize int, dir string) (string, map[string]float64) {
	ratios := map[string]float64{}
	var sb strings.Builder
	fmt.Fprintf(&sb, "cpu: server CPU per GET hit at %d GETs/s offered (open loop, %d-byte values, all keys hot); results %s\n", rate, valueSize, dir)
	fmt.Fprintf(&sb, "%-10s %9s %9s %10s %11s %10s %10s %10s %9s %9s\n", "case", "GETs/s", "kernel%",
		"proc ns", "NAPI ns", "core ns", "softirq", "XDP ns", "proc cpu", "NAPI cpu")
	by := map[string]cpuResult{}
	for _, r := range rs {
		by[r.Case] = r
		fmt.Fprintf(&sb, "%-10s %9.0f %9.1f %10s %11.0f %10.0f %10.0f %10s %8.0f%% %8.0f%%\n", r.Case, float64(r.Gets)/r.WindowS,
			100*float64(r.KernelGets)/float64(max(r.Gets, 1)), nsOrDash(r.ProcNsPerGet), r.NAPINsPerGet, r.CoreNsPerGet,
			r.SoftirqNs, nsOrDash(r.XDPNsPerHit), 100*r.ProcCPUShare, 100*r.NAPICPUShare)
	}
	sb.WriteString("proc ns: server process CPU (/proc utime+stime) per GET it answered itself; NAPI ns: the server veth's NAPI\n" +
		"thread (receive path, XDP program, XDP_TX) per GET; core ns: all busy time of the server CPU per GET (upper bound);\n" +
		"XDP ns: BPF run time per kernel hit (the program alone: the driver's and XDP_TX's cost are outside it).\n")
	k, okK := by[caseKernel]
	for _, base := range []string{caseMemcached, caseGo} {
		b, ok := by[base]
		if !okK || !ok {
			continue
		}
		user := b.ProcNsPerGet
		ratios[base] = ratio(user, k.XDPNsPerHit)
		fmt.Fprintf(&sb, "%s process CPU per GET / XDP program time per kernel hit: %s (target >= 20)\n", base, fmtRatio(ratios[base]))
		fmt.Fprintf(&sb, "%s (process + its NAPI) per GET / kernel case (NAPI thread, XDP included) per GET: %s\n", base,
			fmtRatio(ratio(user+b.NAPINsPerGet, k.NAPINsPerGet)))
		fmt.Fprintf(&sb, "%s server core busy per GET / kernel case server core busy per GET: %s\n", base, fmtRatio(ratio(b.CoreNsPerGet, k.CoreNsPerGet)))
	}
	return sb.String(), ratios
}

func nsOrDash(v float64) string {
	if v != v || v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}
