package bpf

import (
	"flag"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// benchPrograms loads the benchmark variants: the cache and echo programs wrapped to restore the
// request after each run, and the restore alone (see c/bench.h).
type benchPrograms struct {
	cache, echo, restore *ebpf.Program
	cachePacket          *ebpf.Map
	echoPacket           *ebpf.Map
	c                    *Cache
}

// benchHitTimeSample is Options.HitTimeSample for the benchmarks: 1 times every hit, to see what
// timing costs against the default sample.
var benchHitTimeSample = flag.Int("hit-time-sample", 0, "Options.HitTimeSample of the benchmarked cache (0: the default)")

func loadBench(b *testing.B) *benchPrograms {
	b.Helper()
	spec, err := loadXdpcacheBench()
	if err != nil {
		b.Fatal(err)
	}
	c, err := newCache(Options{MaxEntries: 1024, MaxBytes: 4 << 20, Admission: AdmitAlways, AllowSources: testClients,
		HitTimeSample: *benchHitTimeSample}, spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	var eobjs echoBenchObjects
	if err := loadEchoBenchObjects(&eobjs, nil); err != nil {
		b.Fatalf("%+v", verifierDetail(err))
	}
	b.Cleanup(func() { eobjs.Close() })
	return &benchPrograms{
		cache: c.rest.Programs["xdp_cache_bench"], restore: c.rest.Programs["xdp_restore_only"],
		cachePacket: c.rest.Maps["bench_packet"], echo: eobjs.XdpEchoBench, echoPacket: eobjs.BenchPacket, c: c,
	}
}

func setBenchPacket(b *testing.B, m *ebpf.Map, frame []byte) {
	b.Helper()
	var v xdpcacheBenchBenchPkt
	v.Len = uint32(len(frame))
	copy(v.Data[:], frame)
	if err := m.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
}

// perRun runs prog repeat times in the kernel and returns the kernel-measured time per run.
func perRun(b *testing.B, prog *ebpf.Program, frame []byte, repeat int, want uint32) time.Duration {
	b.Helper()
	verdict, d, err := prog.Benchmark(frame, repeat, nil)
	if err != nil {
		b.Fatal(err)
	}
	if verdict != want {
		b.Fatalf("verdict %d, want %d", verdict, want)
	}
	return d
}

// loadFloor loads the floor program (c/echo.c) set to answer req with reply, the cache
// program's answer to it: the frame grown by as much, the same payload bytes copied in the same
// way, nothing looked up or checked. It returns the program, ready to benchmark on frame.
func loadFloor(b *testing.B, req packet.UDP, reply []byte) *ebpf.Program {
	b.Helper()
	spec, err := loadEchoBench()
	if err != nil {
		b.Fatal(err)
	}
	frame := req.Bytes()
	// The payload after the frame header starts where the request's command does.
	hdr := len(frame) - len(req.Payload) + protocol.FrameHeaderLen
	grow, n := len(reply)-len(frame), len(reply)-hdr
	if err := spec.Variables["cfg_floor_grow"].Set(int32(grow)); err != nil {
		b.Fatal(err)
	}
	if err := spec.Variables["cfg_floor_copy"].Set(uint32(n)); err != nil {
		b.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		b.Fatalf("%+v", verifierDetail(err))
	}
	b.Cleanup(coll.Close)
	var v echoBenchFloorBytes
	copy(v.B[:], reply[hdr:])
	if err := coll.Maps["floor_value"].Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	setBenchPacket(b, coll.Maps["bench_packet"], frame)
	return coll.Programs["xdp_floor_bench"]
}

// BenchmarkCacheVsEcho measures the cache program answering a 16-byte key against the minimal
// echo program on the same request, in one run. Every run of the cache program is checked to be a
// kernel answer (the requests counter rises by the repeat count). Reported: ns per run of each,
// and ratio = (cache - restore) / (echo - restore), the restore being the benchmark harness's
// own cost, measured alone. The expiring case is an item with a TTL, whose hit reads a clock; the
// gets case answers with the CAS unique, its entry written in two pieces around it; the ipv6
// case swaps 16-byte addresses and sums them into the UDP checksum; keys=10 is a get of ten keys.
// The floor program (loadFloor) resizes the frame and copies the reply's bytes as the cache
// does and no more: floor-ratio is what any program sending this reply pays against echo.
func BenchmarkCacheVsEcho(b *testing.B) {
	for _, tc := range []struct {
		name string
		size int
		ttl  time.Duration
		verb string
		ipv6 bool
		keys int
	}{
		{"value=32", 32, 0, "get", false, 1}, {"value=1000", 1000, 0, "get", false, 1},
		{"value=32,expiring", 32, time.Hour, "get", false, 1}, {"value=32,gets", 32, 0, "gets", false, 1},
		{"value=32,ipv6", 32, 0, "get", true, 1}, {"value=32,keys=10", 32, 0, "get", false, 10},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := loadBench(b)
			keys := []string{"0123456789abcdef"}
			for i := 1; i < tc.keys; i++ {
				keys = append(keys, fmt.Sprintf("0123456789abcd%02d", i))
			}
			for _, key := range keys {
				it := item(key, strings.Repeat("v", tc.size), 0, 1)
				if tc.ttl > 0 {
					it.Expires = time.Now().Add(tc.ttl)
				}
				offer(b, p.c, it)
			}
			req := request(keysCommand(tc.verb, keys...))
			if tc.ipv6 {
				req = request6(keysCommand(tc.verb, keys...))
			}
			frame := req.Bytes()
			setBenchPacket(b, p.cachePacket, frame)
			setBenchPacket(b, p.echoPacket, frame)
			verdict, out := run(b, p.c.Program(), frame)
			if verdict != xdpTX {
				b.Fatalf("verdict %d: the cache did not answer", verdict)
			}
			floor := loadFloor(b, req, out)
			const repeat = 200000
			var cacheT, echoT, restoreT, floorT time.Duration
			before, _ := p.c.counters()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cacheT += perRun(b, p.cache, frame, repeat, xdpTX)
				echoT += perRun(b, p.echo, frame, repeat, xdpTX)
				restoreT += perRun(b, p.restore, frame, repeat, xdpPass)
				floorT += perRun(b, floor, frame, repeat, xdpTX)
			}
			b.StopTimer()
			after, _ := p.c.counters()
			if got := after[xdpcacheCounterCNT_REQUESTS] - before[xdpcacheCounterCNT_REQUESTS]; got < uint64(b.N*repeat) {
				b.Fatalf("%d kernel answers for %d runs: the benchmark did not measure hits", got, b.N*repeat)
			}
			n := float64(b.N)
			c, e, r := float64(cacheT)/n, float64(echoT)/n, float64(restoreT)/n
			b.ReportMetric(c, "cache-ns/run")
			b.ReportMetric(e, "echo-ns/run")
			b.ReportMetric(r, "restore-ns/run")
			b.ReportMetric((c-r)/max(e-r, 1), "ratio")
			b.ReportMetric(c/e, "ratio-incl-restore")
			b.ReportMetric(float64(floorT)/n, "floor-ns/run")
			b.ReportMetric(float64(floorT)/n/e, "floor-ratio")
		})
	}
}

// coldThrash is how much memory BenchmarkCacheCold walks between runs: well past a core's L2 and
// most of this machine's L3, so the program, the maps it reads and the helpers it calls start
// from the farther caches, as they do in live traffic at tens of thousands of packets per second,
// when the NAPI thread wakes for nearly every packet and other work runs in between.
const coldThrash = 8 << 20

var coldBuf = make([]byte, coldThrash)

// BenchmarkCacheCold runs the cache program (the production build, not the benchmark wrapper)
// once per frame after walking coldThrash bytes, and reports the run time the kernel's BPF
// statistics give it (kernel.bpf_stats_enabled), the figure experiment-cpu reads in live traffic,
// next to the same for the echo program and for XDP_PASS, whose figure is the statistics' own
// cost (a sched_clock read inside the timed interval). BPF_PROG_RUN with a repeat count of one
// hands every run a fresh frame, so no restore is needed. Warm, back-to-back runs
// (BenchmarkCacheVsEcho) say what the instructions cost; this says what a packet costs when it
// arrives alone.
func BenchmarkCacheCold(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var was, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		b.Fatal(err)
	}
	cpu := 0
	for !was.IsSet(cpu) {
		cpu++
	}
	one.Set(cpu) // the thrash and the runs on one core, so the thrash evicts what the runs use
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		b.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &was)
	stats, err := EnableStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()

	c := newTestCache(b, Options{MaxEntries: 1024, MaxBytes: 4 << 20, Admission: AdmitAlways, AllowSources: testClients})
	key := "0123456789abcdef"
	offer(b, c, item(key, strings.Repeat("v", 32), 0, 1))
	frame := request(keysCommand("get", key)).Bytes()
	echo, err := LoadEcho(11211)
	if err != nil {
		b.Fatal(err)
	}
	defer echo.Close()
	pass, err := LoadPass()
	if err != nil {
		b.Fatal(err)
	}
	defer pass.Close()
	progs := []struct {
		name string
		prog *ebpf.Program
		want uint32
	}{{"cache", c.objs.XdpCache, xdpTX}, {"echo", echo, xdpTX}, {"pass", pass, xdpPass}}
	before := make([]ebpf.ProgramStats, len(progs))
	for i, p := range progs {
		st, err := p.prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		before[i] = *st
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range progs {
			for j := 0; j < len(coldBuf); j += 64 {
				coldBuf[j]++
			}
			if verdict, _, err := p.prog.Benchmark(frame, 1, nil); err != nil || verdict != p.want {
				b.Fatalf("%s: verdict %d, want %d: %v", p.name, verdict, p.want, err)
			}
		}
	}
	b.StopTimer()
	for i, p := range progs {
		st, err := p.prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		runs := st.RunCount - before[i].RunCount
		if runs < uint64(b.N) {
			b.Fatalf("%s: %d runs counted for %d: BPF statistics are off", p.name, runs, b.N)
		}
		b.ReportMetric(float64(st.Runtime-before[i].Runtime)/float64(runs), p.name+"-cold-ns/run")
	}
}

// BenchmarkOffer measures what the server pays per UDP hit it answers itself and offers to the
// kernel cache, for the offers that end in nothing: a one-off key the frequency policy refuses,
// and a key whose current version the kernel already holds (both decided before the value is
// encoded), against an offer that installs.
func BenchmarkOffer(b *testing.B) {
	value := strings.Repeat("v", 512)
	b.Run("refused", func(b *testing.B) {
		// Each key comes back after 128 K offers, by when its sketch counters have been halved
		// to nothing (the window is 10 x 1024 offers): every offer is of a key seen once.
		c := newTestCache(b, Options{MaxEntries: 1024, Admission: AdmitFrequency})
		keys := make([]string, 1<<17)
		for i := range keys {
			keys[i] = fmt.Sprintf("oneoff:%d", i)
		}
		it := item("", value, 0, 0)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			it.Key, it.CAS = keys[i%len(keys)], uint64(i+1)
			if err := c.Offer(it); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if n, _ := c.Len(); n > b.N/4+1 { // the sketch admits a few by collision
			b.Fatalf("%d of %d one-off offers installed: the benchmark did not measure refusals", n, b.N)
		}
	})
	b.Run("current", func(b *testing.B) {
		c := newTestCache(b, Options{MaxEntries: 1 << 16, Admission: AdmitAlways})
		it := item("hot", value, 0, 1)
		offer(b, c, it)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := c.Offer(it); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("install", func(b *testing.B) {
		c := newTestCache(b, Options{MaxEntries: 1 << 16, Admission: AdmitAlways})
		it := item("k", value, 0, 0)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			it.CAS = uint64(i + 1)
			if err := c.Offer(it); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// callCostProgram is an XDP program that makes calls calls of kind ("helper" to
// bpf_xdp_get_buff_len, "subprog" to an empty BPF-to-BPF function, "ktime" and "ktime-coarse" to
// the clocks) and returns XDP_PASS; 0 calls is the empty program.
func callCostProgram(b *testing.B, kind string, calls int) *ebpf.Program {
	b.Helper()
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	for range calls {
		switch kind {
		case "helper":
			insns = append(insns, asm.Mov.Reg(asm.R1, asm.R6), asm.FnXdpGetBuffLen.Call())
		case "subprog":
			insns = append(insns, asm.Mov.Reg(asm.R1, asm.R6), asm.Call.Label("sub"))
		case "ktime":
			insns = append(insns, asm.FnKtimeGetNs.Call())
		case "ktime-coarse":
			insns = append(insns, asm.FnKtimeGetCoarseNs.Call())
		}
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, int32(xdpPass)), asm.Return())
	if kind == "subprog" {
		insns = append(insns, asm.Mov.Imm(asm.R0, 0).WithSymbol("sub"), asm.Return())
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		b.Fatalf("%s x%d: %v", kind, calls, err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog
}

// BenchmarkCallCost measures what one call costs inside an XDP program on this machine: the
// empty program's run time (the test-run loop itself), and each kind of call's run time with
// 1 and 4 calls, from which the per-call cost is the difference over 3. On a CPU whose returns
// go through a speculation-safe thunk every call pays for a mispredicted return; this is why
// the cache program's hit path avoids calls (docs/BENCHMARKS.md section 2).
func BenchmarkCallCost(b *testing.B) {
	testenv.RequireRoot(b)
	frame := request(keysCommand("get", "k")).Bytes()
	const repeat = 200000
	empty := callCostProgram(b, "", 0)
	for _, kind := range []string{"helper", "subprog", "ktime", "ktime-coarse"} {
		b.Run(kind, func(b *testing.B) {
			one, four := callCostProgram(b, kind, 1), callCostProgram(b, kind, 4)
			var e, o, f time.Duration
			for i := 0; i < b.N; i++ {
				e += perRun(b, empty, frame, repeat, xdpPass)
				o += perRun(b, one, frame, repeat, xdpPass)
				f += perRun(b, four, frame, repeat, xdpPass)
			}
			n := float64(b.N)
			b.ReportMetric(float64(e)/n, "empty-ns/run")
			b.ReportMetric(float64(o)/n, "1call-ns/run")
			b.ReportMetric(float64(f)/n, "4calls-ns/run")
			b.ReportMetric(float64(f-o)/n/3, "ns/call")
		})
	}
}
