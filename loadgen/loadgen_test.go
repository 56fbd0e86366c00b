package loadgen

import (
	"context"
	"encoding/json"
	"image/png"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.IgnoreSpawner(), testenv.IgnoreStoreClock())
}

// quick is a short configuration against addr with no load phase and no warmup, so that every
// request the fake server sees is in the measured window.
func quick(addr string) Config {
	c := Defaults()
	c.Server = addr
	c.NoLoad = true
	c.Warmup = 0
	c.Duration = 500 * time.Millisecond
	c.Rate = 4000
	c.Conns = 2
	c.Keys = 1000
	c.KeyDist = "uniform"
	c.GetRatio = 1
	// Generous: runs without loss end as soon as every reply is in, and a starved test process
	// must not turn slow replies into timeouts.
	c.Timeout = 2 * time.Second
	c.Seed = 7
	return c
}

func run(t *testing.T, cfg Config) *Report {
	t.Helper()
	rep, err := Run(context.Background(), cfg, testWriter{t})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return rep
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func count(r *Report, c Class) uint64 { return r.Classes[c.String()].Count }

// TestClassification checks that marked replies count as kernel hits, unmarked ones as user hits
// and END as misses, exactly as many as the fake server sent of each.
func TestClassification(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "udp6" {
				addr = "[::1]:0"
			}
			f := newFakeUDP(t, network, addr)
			f.dscp = 10
			f.hasKey = func(k uint64) bool { return k%4 != 3 }  // 3/4 hits
			f.markKey = func(k uint64) bool { return k%4 == 0 } // 1/3 of hits marked
			f.serve()
			cfg := quick(f.addr())
			cfg.KernelDSCP = 10
			rep := run(t, cfg)
			if rep.Timeouts != 0 || rep.Errors != 0 {
				t.Fatalf("timeouts %d, errors %d", rep.Timeouts, rep.Errors)
			}
			if got, want := count(rep, KernelHit), f.marked.Load(); got != want || got == 0 {
				t.Errorf("kernel_hit %d, server sent %d marked hits", got, want)
			}
			if got, want := count(rep, UserHit), f.unmarked.Load(); got != want || got == 0 {
				t.Errorf("user_hit %d, server sent %d unmarked hits", got, want)
			}
			if got, want := count(rep, UserMiss), f.misses.Load(); got != want || got == 0 {
				t.Errorf("user_miss %d, server sent %d misses", got, want)
			}
			if math.Abs(rep.HitRatio-0.75) > 0.06 || math.Abs(rep.KernelShare-0.25) > 0.05 {
				t.Errorf("hit ratio %.3f (want ~0.75), kernel share %.3f (want ~0.25)", rep.HitRatio, rep.KernelShare)
			}
		})
	}
}

// TestClassificationWrongMark checks that a mark other than --kernel-dscp, or no --kernel-dscp
// at all, never makes a kernel hit.
func TestClassificationWrongMark(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.dscp = 12
	f.hasKey = func(uint64) bool { return true }
	f.markKey = func(uint64) bool { return true }
	f.serve()
	cfg := quick(f.addr())
	cfg.KernelDSCP = 10
	rep := run(t, cfg)
	if count(rep, KernelHit) != 0 || count(rep, UserHit) != f.marked.Load() {
		t.Errorf("DSCP 12 replies with --kernel-dscp 10: kernel_hit %d, user_hit %d of %d",
			count(rep, KernelHit), count(rep, UserHit), f.marked.Load())
	}
	cfg.KernelDSCP = 0
	rep = run(t, cfg)
	if count(rep, KernelHit) != 0 || count(rep, UserHit) == 0 {
		t.Errorf("no --kernel-dscp: kernel_hit %d, user_hit %d", count(rep, KernelHit), count(rep, UserHit))
	}
}

// TestReassembly sends 5000-byte and 100,000-byte values (4 and 72 datagrams) split into
// 1400-byte datagrams, last first and each twice; every reply must be reassembled into one user
// hit, with the set path alongside.
func TestReassembly(t *testing.T) {
	for _, size := range []int{5000, 100_000} {
		// 72 datagrams sent twice per reply, ~330 KB of socket buffer each: a low rate keeps the
		// fake server's bursts within the client's receive buffer even when the reader is
		// scheduled late on a busy machine.
		rate := 4000.0
		if size > 50_000 {
			rate = 150
		}
		t.Run(strconv.Itoa(size), func(t *testing.T) { testReassembly(t, size, rate) })
	}
}

func testReassembly(t *testing.T, size int, rate float64) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.hasKey = func(uint64) bool { return true }
	f.valueSize = size
	f.reverse = true
	f.duplicate = true
	f.serve()
	cfg := quick(f.addr())
	cfg.Rate = rate
	cfg.GetRatio = 0.8
	cfg.ValueSize = "3000"
	rep := run(t, cfg)
	if rep.Timeouts != 0 || rep.Errors != 0 {
		t.Fatalf("timeouts %d, errors %d", rep.Timeouts, rep.Errors)
	}
	if got, want := count(rep, UserHit), f.unmarked.Load(); got != want || got == 0 {
		t.Errorf("user_hit %d, server sent %d multi-datagram hits", got, want)
	}
	if got, want := count(rep, Set), f.sets.Load(); got != want || got == 0 {
		t.Errorf("set %d, server stored %d", got, want)
	}
}

// TestLossAndTimeouts drops every fifth request and, separately, loses one datagram of some
// multi-datagram replies: each lost or incomplete reply is one timeout, nothing else.
func TestLossAndTimeouts(t *testing.T) {
	t.Run("requests", func(t *testing.T) {
		f := newFakeUDP(t, "udp4", "127.0.0.1:0")
		f.hasKey = func(uint64) bool { return true }
		f.drop = func(n uint64) bool { return n%5 == 0 }
		f.serve()
		cfg := quick(f.addr())
		cfg.Timeout = time.Second // long enough that only lost replies time out
		rep := run(t, cfg)
		if rep.Timeouts != f.dropped.Load() || rep.Timeouts == 0 {
			t.Errorf("timeouts %d, server dropped %d", rep.Timeouts, f.dropped.Load())
		}
		if count(rep, UserHit) != f.unmarked.Load() || rep.Errors != 0 {
			t.Errorf("user_hit %d of %d answered, errors %d", count(rep, UserHit), f.unmarked.Load(), rep.Errors)
		}
		accounted(t, rep)
	})
	t.Run("datagrams", func(t *testing.T) {
		f := newFakeUDP(t, "udp4", "127.0.0.1:0")
		f.hasKey = func(uint64) bool { return true }
		f.valueSize = 3000
		f.dropPart = func(k uint64) bool { return k%3 == 0 }
		f.serve()
		cfg := quick(f.addr())
		cfg.Timeout = time.Second // long enough that only lost replies time out
		rep := run(t, cfg)
		if rep.Timeouts != f.partial.Load() || rep.Timeouts == 0 {
			t.Errorf("timeouts %d, server sent %d incomplete replies", rep.Timeouts, f.partial.Load())
		}
		if count(rep, UserHit) != f.unmarked.Load()-f.partial.Load() || rep.Errors != 0 {
			t.Errorf("user_hit %d, want %d; errors %d", count(rep, UserHit), f.unmarked.Load()-f.partial.Load(), rep.Errors)
		}
	})
}

// TestWrongKeyIsError answers some gets with another key's value: a matching request id with the
// wrong content must count as an error, never as a hit.
func TestWrongKeyIsError(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.hasKey = func(uint64) bool { return true }
	f.wrongKey = func(k uint64) bool { return k%2 == 0 }
	f.serve()
	rep := run(t, quick(f.addr()))
	if rep.Errors != f.wrong.Load() || rep.Errors == 0 {
		t.Errorf("errors %d, server sent %d wrong keys", rep.Errors, f.wrong.Load())
	}
	if count(rep, UserHit) != f.unmarked.Load()-f.wrong.Load() {
		t.Errorf("user_hit %d, want %d", count(rep, UserHit), f.unmarked.Load()-f.wrong.Load())
	}
}

// TestPacing runs the open loop at a moderate rate and checks the schedule as the server saw it
// (kernel receive timestamps): the rate, and Poisson inter-arrival times (coefficient of variation
// near 1). On a machine too busy for the generator to keep its schedule, the generator must say
// so (Schedule.Behind and a warning) rather than report a schedule it did not keep; the test then
// tries again, and skips if the machine never lets it run on time.
func TestPacing(t *testing.T) {
	if raceEnabled {
		t.Skip("schedule precision is not checkable under the race detector")
	}
	for attempt := 1; attempt <= 3; attempt++ {
		f := newFakeUDP(t, "udp4", "127.0.0.1:0")
		f.hasKey = func(uint64) bool { return true }
		f.serve()
		cfg := quick(f.addr())
		cfg.Rate = 2000
		cfg.Duration = 2 * time.Second
		rep := run(t, cfg)
		// 4000 Poisson arrivals have a standard deviation of 63 (1.6%).
		if math.Abs(rep.OfferedRate-2000)/2000 > 0.06 {
			t.Errorf("offered rate %.0f, want 2000 ± 6%%", rep.OfferedRate)
		}
		cv := gapCV(f.arrivalTimes())
		t.Logf("attempt %d: offered %.0f/s, achieved %.0f/s, server-side gap CV %.3f, lag p50 %.1f µs p99 %.1f µs, unsent %d",
			attempt, rep.OfferedRate, rep.AchievedRate, cv, rep.Schedule.LagP50Us, rep.Schedule.LagP99Us, rep.Schedule.Unsent)
		if rep.Schedule.Behind {
			if len(rep.Warnings) == 0 {
				t.Fatal("generator fell behind without a warning")
			}
			continue
		}
		// A request due in the last instant of the window may miss it by its send lag.
		if math.Abs(rep.AchievedRate-rep.OfferedRate)/rep.OfferedRate > 0.01 || rep.Schedule.Unsent > 4 {
			t.Errorf("achieved %.0f of offered %.0f, unsent %d", rep.AchievedRate, rep.OfferedRate, rep.Schedule.Unsent)
		}
		// Batching and wake-up jitter bend the gaps a little; a periodic schedule would give 0
		// and a bunched one well over 1.
		if cv < 0.8 || cv > 1.25 {
			t.Errorf("inter-arrival coefficient of variation %.2f at the server, want about 1, with no lag reported", cv)
		}
		return
	}
	t.Skip("the generator reported falling behind in every attempt: machine too busy to check the schedule")
}

func gapCV(arr []int64) float64 {
	var sum, sum2 float64
	for i := 1; i < len(arr); i++ {
		g := float64(arr[i] - arr[i-1])
		sum += g
		sum2 += g * g
	}
	n := float64(len(arr) - 1)
	mean := sum / n
	return math.Sqrt(sum2/n-mean*mean) / mean
}

// TestLatencyFromIntendedTime delays every reply by 20 ms: every class must show it, and in closed
// loop the concurrency caps the rate at concurrency/delay.
func TestLatencyFromIntendedTime(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.hasKey = func(uint64) bool { return true }
	f.delay = 20 * time.Millisecond
	f.serve()
	cfg := quick(f.addr())
	cfg.Rate = 0
	cfg.Concurrency = 4
	cfg.Duration = time.Second
	rep := run(t, cfg)
	hit := rep.Classes["user_hit"]
	if hit.P50Us < 20_000 || hit.P50Us > 1_000_000 {
		t.Errorf("p50 %.0f µs with a 20 ms server delay", hit.P50Us)
	}
	// 4 outstanding / 20 ms = 200 req/s at most (a slow machine gives less, never more).
	if rep.AchievedRate > 205 || rep.AchievedRate < 20 {
		t.Errorf("closed loop with 4 outstanding and 20 ms replies: %.0f req/s, want at most 200", rep.AchievedRate)
	}
}

// TestInterrupt cancels a long run: the report covers what was measured and says so.
func TestInterrupt(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.hasKey = func(uint64) bool { return true }
	f.serve()
	cfg := quick(f.addr())
	cfg.Duration = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("cancelled run took %s", time.Since(start))
	}
	if !rep.Interrupted || rep.DurationS <= 0 || rep.DurationS > 1 || count(rep, UserHit) == 0 {
		t.Errorf("interrupted %v, duration %.2f s, hits %d", rep.Interrupted, rep.DurationS, count(rep, UserHit))
	}
}

// TestWriters parses the JSON back, decodes the PNG, checks the SVG and the .hgrm files.
func TestWriters(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.dscp = 10
	f.hasKey = func(k uint64) bool { return k%2 == 0 }
	f.markKey = func(k uint64) bool { return k%4 == 0 }
	f.serve()
	cfg := quick(f.addr())
	cfg.KernelDSCP = 10
	cfg.GetRatio = 0.9
	rep := run(t, cfg)
	dir := t.TempDir()

	jp := filepath.Join(dir, "r.json")
	if err := rep.WriteJSON(jp); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(jp)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("JSON does not parse: %v", err)
	}
	for _, k := range []string{"achieved_rate", "offered_rate", "duration_s", "hit_ratio", "kernel_share", "timeouts", "errors"} {
		if _, ok := doc[k].(float64); !ok {
			t.Errorf("JSON %s = %v, want a number", k, doc[k])
		}
	}
	if _, ok := doc["interrupted"].(bool); !ok {
		t.Error("JSON lacks interrupted")
	}
	if c, ok := doc["config"].(map[string]any); !ok || c["server"] != cfg.Server {
		t.Errorf("JSON config %v", doc["config"])
	}
	classes, _ := doc["classes"].(map[string]any)
	for _, c := range Classes {
		m, ok := classes[c.String()].(map[string]any)
		if !ok {
			t.Fatalf("JSON lacks classes.%s", c)
		}
		for _, k := range []string{"count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"} {
			if _, ok := m[k].(float64); !ok {
				t.Errorf("classes.%s.%s missing", c, k)
			}
		}
		if uint64(m["count"].(float64)) != count(rep, c) || count(rep, c) == 0 {
			t.Errorf("classes.%s.count %v, report %d", c, m["count"], count(rep, c))
		}
		if !(m["p50_us"].(float64) <= m["p99_us"].(float64) && m["p99_us"].(float64) <= m["max_us"].(float64)) {
			t.Errorf("classes.%s percentiles out of order: %v", c, m)
		}
	}

	pp := filepath.Join(dir, "cdf.png")
	if err := rep.WritePlot(pp); err != nil {
		t.Fatal(err)
	}
	pf, err := os.Open(pp)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(pf)
	pf.Close()
	if err != nil {
		t.Fatalf("PNG does not decode: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("PNG is %v", b)
	}
	sp := filepath.Join(dir, "cdf.svg")
	if err := rep.WritePlot(sp); err != nil {
		t.Fatal(err)
	}
	if svg, _ := os.ReadFile(sp); !strings.Contains(string(svg), "<svg") || !strings.Contains(string(svg), "kernel_hit") {
		t.Error("SVG lacks an <svg> element or the kernel_hit legend")
	}
	if err := rep.WritePlot(filepath.Join(dir, "cdf.gif")); err == nil {
		t.Error("WritePlot accepted .gif")
	}

	if err := rep.WriteHDR(filepath.Join(dir, "h", "run-")); err != nil {
		t.Fatal(err)
	}
	for _, c := range Classes {
		b, err := os.ReadFile(filepath.Join(dir, "h", "run-"+c.String()+".hgrm"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "#[Mean") || !strings.Contains(string(b), "Percentile") {
			t.Errorf("%s.hgrm is not an HdrHistogram percentile file:\n%.200s", c, b)
		}
	}

	var table strings.Builder
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kernel_hit", "user_hit", "user_miss", "set", "p99.9", "kernel share"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func TestConfigValidation(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"proto":        func(c *Config) { c.Proto = "sctp" },
		"server":       func(c *Config) { c.Server = "nohostport" },
		"theta":        func(c *Config) { c.ZipfTheta = 5 },
		"dist":         func(c *Config) { c.KeyDist = "pareto" },
		"value":        func(c *Config) { c.ValueSize = "big" },
		"get ratio":    func(c *Config) { c.GetRatio = 1.5 },
		"dscp":         func(c *Config) { c.KernelDSCP = 64 },
		"concurrency":  func(c *Config) { c.Rate, c.Concurrency, c.Conns = 0, 2, 4 },
		"key size":     func(c *Config) { c.KeySize, c.Keys = 3, 100000 },
		"udp value":    func(c *Config) { c.ValueSize = "100000" },
		"negative dur": func(c *Config) { c.Duration = -time.Second },
	} {
		cfg := Defaults()
		mod(&cfg)
		if _, err := Run(context.Background(), cfg, nil); err == nil || !strings.Contains(err.Error(), "invalid configuration") {
			t.Errorf("%s: err %v, want ErrConfig", name, err)
		}
	}
}

// TestWarmupSettle simulates a kernel cache that fills 1.5 s into the run: every hit is a user hit
// before, a kernel hit after. A settling warmup must wait for the kernel share to stop moving, so
// the measured window sees kernel hits only; a fixed short warmup would not.
func TestWarmupSettle(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.dscp = 10
	f.hasKey = func(uint64) bool { return true }
	start := time.Now()
	f.markKey = func(uint64) bool { return time.Since(start) > 1500*time.Millisecond }
	f.serve()
	cfg := quick(f.addr())
	cfg.KernelDSCP = 10
	cfg.Warmup = 200 * time.Millisecond
	cfg.WarmupSettle = 0.01
	cfg.WarmupMax = 10 * time.Second
	cfg.Duration = 500 * time.Millisecond
	rep := run(t, cfg)
	if rep.KernelShare < 0.99 {
		t.Errorf("kernel share %.3f after a settling warmup, want all kernel hits", rep.KernelShare)
	}
	if el := time.Since(start); el < 2500*time.Millisecond {
		t.Errorf("run took %s: the warmup cannot have waited for the switch at 1.5 s to settle", el)
	}
}

// TestServerDown runs against a port where nothing listens: the run must end on time with every
// request accounted for as a timeout or an error (ICMP port unreachable), and no answers.
func TestServerDown(t *testing.T) {
	port := freeUDPPort(t)
	cfg := quick(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	cfg.Timeout = 200 * time.Millisecond
	start := time.Now()
	rep := run(t, cfg)
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("run against a closed port took %s", el)
	}
	if rep.AchievedRate != 0 || rep.Timeouts+rep.Errors == 0 {
		t.Errorf("achieved %.0f, timeouts %d, errors %d", rep.AchievedRate, rep.Timeouts, rep.Errors)
	}
	accounted(t, rep)
}

// TestCoordinatedOmission stalls the server once for 200 ms in a 1 s run at 2000 req/s. About 400
// requests fall due during the stall; measured from their intended send times their latencies
// spread up to 200 ms, so p90 is near 100 ms. A generator that waited for replies before sending
// (coordinated omission) would see one slow request and a p90 of microseconds.
func TestCoordinatedOmission(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.hasKey = func(uint64) bool { return true }
	f.stallAt = 500
	f.stall = 200 * time.Millisecond
	f.serve()
	cfg := quick(f.addr())
	cfg.Rate = 2000
	cfg.Duration = time.Second
	rep := run(t, cfg)
	hit := rep.Classes["user_hit"]
	if hit.P90Us < 50_000 || hit.MaxUs < 150_000 {
		t.Errorf("p90 %.0f µs, max %.0f µs after a 200 ms stall: the stall is not charged to the requests due during it", hit.P90Us, hit.MaxUs)
	}
	t.Logf("p50 %.0f µs, p90 %.0f µs, p99 %.0f µs, max %.0f µs", hit.P50Us, hit.P90Us, hit.P99Us, hit.MaxUs)
	// A generator that stopped for the stall would leave ~400 requests unsent; one that goes on
	// may still end a few milliseconds behind on a busy machine (the race detector, other test
	// binaries), so the bound is a tenth of the stall, not the handful TestPacing allows.
	if rep.Timeouts != 0 || rep.Schedule.Unsent > 40 {
		t.Errorf("timeouts %d, unsent %d: the schedule must go on through the stall", rep.Timeouts, rep.Schedule.Unsent)
	}
}
