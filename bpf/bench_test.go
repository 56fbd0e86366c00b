package bpf

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// benchPrograms loads the benchmark variants: the cache and echo programs wrapped to restore the
// request after each run, and the restore alone (see c/bench.h).
type benchPrograms struct {
	cache, echo, restore *ebpf.Program
	cachePacket          *ebpf.Map
	echoPacket           *ebpf.Map
	c                    *Cache
}

func loadBench(b *testing.B) *benchPrograms {
	b.Helper()
	spec, err := loadXdpcacheBench()
	if err != nil {
		b.Fatal(err)
	}
	c, err := newCache(Options{MaxEntries: 1024, MaxBytes: 4 << 20, Admission: AdmitAlways, AllowSources: testClients}, spec)
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

// BenchmarkCacheVsEcho measures the cache program answering a 16-byte key against the minimal
// echo program on the same request, in one run. Every run of the cache program is checked to be a
// kernel answer (the requests counter rises by the repeat count). Reported: ns per run of each,
// and ratio = (cache - restore) / (echo - restore), the restore being the benchmark harness's
// own cost, measured alone.
func BenchmarkCacheVsEcho(b *testing.B) {
	for _, size := range []int{32, 1000} {
		b.Run(fmt.Sprintf("value=%d", size), func(b *testing.B) {
			p := loadBench(b)
			key := "0123456789abcdef"
			offer(b, p.c, item(key, strings.Repeat("v", size), 0, 1))
			frame := request(keysCommand("get", key)).Bytes()
			setBenchPacket(b, p.cachePacket, frame)
			setBenchPacket(b, p.echoPacket, frame)
			const repeat = 200000
			var cacheT, echoT, restoreT time.Duration
			before, _ := p.c.counters()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cacheT += perRun(b, p.cache, frame, repeat, xdpTX)
				echoT += perRun(b, p.echo, frame, repeat, xdpTX)
				restoreT += perRun(b, p.restore, frame, repeat, xdpPass)
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
		})
	}
}
