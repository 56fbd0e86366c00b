package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/lab/experiment"
	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/loadgen"
)

// BenchmarkResidentVsMemcached loads the same items over TCP into `xdpcache serve` and Debian's
// memcached, both with -m 2048, and reports each one's resident memory once loaded and again
// after a pause: VmRSS and its anonymous part (RssAnon; the rest is mostly the binary's code),
// and the ratios. Items: RESIDENT_ITEMS (default 3 M) of 16-byte keys and
// RESIDENT_VALUE-byte values (default 200). With RESIDENT_BASELINE_BIN set to another build of
// xdpcache (an older commit), that one is measured too, as "baseline". For the xdpcache processes
// it also reports the garbage collector's cycles, CPU share and longest stop-the-world pause
// during the load (from GODEBUG=gctrace=1).
//
// With RESIDENT_STEADY_RATE set (requests/s), each server then serves a steady open-loop load
// over TCP from `xdpcache bench` for RESIDENT_STEADY_SECONDS (default 20): uniform keys over
// every item loaded, 90% gets and 10% sets of the same size, so the store stays full and its
// items churn. Reported per server: the p50/p99/p99.9 of gets and sets, and for the Go servers
// the collections during that window, the CPU they took (mark assist, background and the two
// stop-the-world phases, from gctrace) against the process's CPU in the window, and the longest
// pause.
func BenchmarkResidentVsMemcached(b *testing.B) {
	items := envInt(b, "RESIDENT_ITEMS", 3_000_000)
	valueSize := envInt(b, "RESIDENT_VALUE", 200)
	steadyRate := envIntOr(b, "RESIDENT_STEADY_RATE", 0)
	steadySeconds := envIntOr(b, "RESIDENT_STEADY_SECONDS", 20)
	mc := testenv.LookPath(b, "memcached")
	bin := filepath.Join(b.TempDir(), "xdpcache")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	names := []string{"memcached", "xdpcache"}
	bins := map[string]string{"xdpcache": bin}
	if base := os.Getenv("RESIDENT_BASELINE_BIN"); base != "" {
		names = append(names, "baseline")
		bins["baseline"] = base
	}
	for b.Loop() {
		results := map[string][3]float64{}
		for _, name := range names {
			port := testenv.FreePort(b)
			p := strconv.Itoa(port)
			var cmd *exec.Cmd
			gc := &gcTrace{}
			if name == "memcached" {
				cmd = exec.Command(mc, "-l", "127.0.0.1", "-p", p, "-U", "0", "-m", "2048", "-t", "2")
				if os.Geteuid() == 0 {
					cmd.Args = append(cmd.Args, "-u", "root") // memcached refuses root without it
				}
			} else {
				cmd = exec.Command(bins[name], "serve", "-l", "127.0.0.1", "-p", p, "-U", "0", "-m", "2048", "--log-level", "error")
				cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
				cmd.Stderr = gc
			}
			if err := testenv.StartChild(cmd); err != nil {
				b.Fatalf("start %s: %v", name, err)
			}
			addr := net.JoinHostPort("127.0.0.1", p)
			loaded, settled, anon := func() (float64, float64, float64) {
				defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
				waitListening(b, addr)
				load(b, addr, items, valueSize)
				if got := currItems(b, addr); got != items {
					b.Fatalf("%s holds %d items, want %d", name, got, items)
				}
				loaded := procStatus(b, cmd.Process.Pid, "VmRSS:")
				time.Sleep(10 * time.Second)
				settled, anon := procStatus(b, cmd.Process.Pid, "VmRSS:"), procStatus(b, cmd.Process.Pid, "RssAnon:")
				if steadyRate > 0 {
					from, cpu0 := gc.mark(), procCPU(b, cmd.Process.Pid)
					rep := steady(b, bin, addr, items, valueSize, steadyRate, steadySeconds)
					cpu := procCPU(b, cmd.Process.Pid) - cpu0
					line := fmt.Sprintf("%s under %d requests/s for %d s: %s", name, steadyRate, steadySeconds, rep)
					if name != "memcached" {
						line += "; " + gc.window(from, cpu)
					}
					b.Log(line)
				}
				return loaded, settled, anon
			}()
			results[name] = [3]float64{loaded, settled, anon}
			b.Logf("%s: %d items of %d B: VmRSS %.0f MiB loaded, %.0f MiB 10 s later, of which RssAnon %.0f MiB", name, items, valueSize, loaded, settled, anon)
			if name != "memcached" {
				b.Logf("%s: %s", name, gc.summary())
			}
		}
		b.ReportMetric(results["xdpcache"][0], "xdpcache-MiB")
		b.ReportMetric(results["memcached"][0], "memcached-MiB")
		b.ReportMetric(results["xdpcache"][0]/results["memcached"][0], "loaded-ratio")
		b.ReportMetric(results["xdpcache"][1]/results["memcached"][1], "settled-ratio")
		b.ReportMetric(results["xdpcache"][2]/results["memcached"][2], "anon-ratio")
		if base, ok := results["baseline"]; ok {
			b.ReportMetric(base[0]/results["memcached"][0], "baseline-loaded-ratio")
		}
	}
}

func envInt(b *testing.B, name string, def int) int {
	n := envIntOr(b, name, def)
	if n <= 0 {
		b.Fatalf("%s=%d: want a positive integer", name, n)
	}
	return n
}

func envIntOr(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		b.Fatalf("%s=%q: want a whole number", name, v)
	}
	return n
}

// steady runs `xdpcache bench` over TCP against addr at rate for seconds, on the keys load
// stored, and returns its get and set latency.
func steady(b *testing.B, bin, addr string, items, valueSize, rate, seconds int) string {
	out := filepath.Join(b.TempDir(), "steady.json")
	cmd := exec.Command(bin, "bench", "--server", addr, "--proto", "tcp", "--load=false",
		"--keys", strconv.Itoa(items), "--key-size", "16", "--key-dist", "uniform",
		"--value-size", strconv.Itoa(valueSize), "--get-ratio", "0.9", "--rate", strconv.Itoa(rate),
		"--warmup", "2s", "--duration", fmt.Sprintf("%ds", seconds), "--json", out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("bench: %v\n%s", err, msg)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		b.Fatal(err)
	}
	var rep loadgen.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		b.Fatalf("bench report: %v", err)
	}
	if rep.Timeouts != 0 || rep.Errors != 0 || rep.HitRatio < 0.99 {
		b.Fatalf("steady load: %d timeouts, %d errors, hit ratio %.3f", rep.Timeouts, rep.Errors, rep.HitRatio)
	}
	get, set := rep.Classes[loadgen.UserHit.String()], rep.Classes[loadgen.Set.String()]
	return fmt.Sprintf("%.0f requests/s achieved; get p50 %.0f p99 %.0f p99.9 %.0f µs; set p50 %.0f p99 %.0f p99.9 %.0f µs",
		rep.AchievedRate, get.P50Us, get.P99Us, get.P999Us, set.P50Us, set.P99Us, set.P999Us)
}

// procCPU is another process's user and system time in seconds.
func procCPU(b *testing.B, pid int) float64 {
	t, err := experiment.ProcCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return t.Seconds()
}

func waitListening(b *testing.B, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s never listened: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// load stores items over 4 connections, in pipelined batches of noreply sets, each batch ended
// by a meta no-op whose reply says the batch was applied.
func load(b *testing.B, addr string, items, valueSize int) {
	const conns, batch = 4, 500
	value := strings.Repeat("v", valueSize)
	var wg sync.WaitGroup
	for w := range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			var buf []byte
			for start := w * batch; start < items; start += conns * batch {
				buf = buf[:0]
				for i := start; i < min(start+batch, items); i++ {
					// The keys of `xdpcache bench --key-size 16`, which the steady load asks for.
					buf = fmt.Appendf(buf, "set k%015d 0 0 %d noreply\r\n%s\r\n", i, valueSize, value)
				}
				buf = append(buf, "mn\r\n"...)
				if _, err := c.Write(buf); err != nil {
					b.Error(err)
					return
				}
				if line, err := r.ReadString('\n'); err != nil || line != "MN\r\n" {
					b.Errorf("batch at %d: %q, %v", start, line, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

func currItems(b *testing.B, addr string) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("stats\r\n")); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReader(c)
	n := -1
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		if line == "END\r\n" {
			return n
		}
		if f := strings.Fields(line); len(f) == 3 && f[1] == "curr_items" {
			n, _ = strconv.Atoi(f[2])
		}
	}
}

// procStatus is a kB field of /proc/PID/status (VmRSS:, RssAnon:) in MiB.
func procStatus(b *testing.B, pid int, field string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == field {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// gcTrace collects a Go process's GODEBUG=gctrace=1 lines from its stderr.
type gcTrace struct {
	mu    sync.Mutex
	buf   []byte
	lines []string
}

func (g *gcTrace) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.buf = append(g.buf, p...)
	for {
		i := bytes.IndexByte(g.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if line := string(g.buf[:i]); strings.HasPrefix(line, "gc ") {
			g.lines = append(g.lines, line)
		}
		g.buf = g.buf[i+1:]
	}
}

// gcLine is "gc 12 @3.456s 2%: 0.015+1.2+0.003 ms clock, ...": the cycle's CPU share since start
// and its two stop-the-world pauses (the first and third clock figures).
var gcLine = regexp.MustCompile(`^gc \d+ @[\d.]+s (\d+)%: ([\d.]+)\+[\d.]+\+([\d.]+) ms clock`)

// gcCPU is the "ms cpu" part of a gctrace line: STW sweep termination, mark assist, background
// mark, idle mark and STW mark termination.
var gcCPU = regexp.MustCompile(`, ([\d.]+)\+([\d.]+)/([\d.]+)/([\d.]+)\+([\d.]+) ms cpu`)

// mark returns where the lines seen so far end, for window.
func (g *gcTrace) mark() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.lines)
}

// window reports the cycles after mark from: their count, the CPU they took outside idle time
// against cpu (the process's seconds in the window), and the longest pause.
func (g *gcTrace) window(from int, cpu float64) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms, longest := 0.0, 0.0
	for _, l := range g.lines[from:] {
		if m := gcLine.FindStringSubmatch(l); m != nil {
			for _, v := range m[2:] {
				f, _ := strconv.ParseFloat(v, 64)
				longest = max(longest, f)
			}
		}
		if m := gcCPU.FindStringSubmatch(l); m != nil {
			for _, i := range []int{1, 2, 3, 5} { // idle-time marking (4) uses CPU nobody wanted
				f, _ := strconv.ParseFloat(m[i], 64)
				ms += f
			}
		}
	}
	return fmt.Sprintf("%d GC cycles, GC %.0f ms CPU of the process's %.2f s (%.1f%%), longest pause %.3f ms",
		len(g.lines)-from, ms, cpu, 100*ms/1000/cpu, longest)
}

// summary reports the cycles, the CPU share the runtime states at the last one, and the longest
// pause.
func (g *gcTrace) summary() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	share, longest := "0", 0.0
	for _, l := range g.lines {
		m := gcLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		share = m[1]
		for _, v := range m[2:] {
			f, _ := strconv.ParseFloat(v, 64)
			longest = max(longest, f)
		}
	}
	last := ""
	if len(g.lines) > 0 {
		last = g.lines[len(g.lines)-1]
	}
	return fmt.Sprintf("%d GC cycles, GC CPU %s%% of the process's since start, longest pause %.3f ms; last: %s", len(g.lines), share, longest, last)
}
