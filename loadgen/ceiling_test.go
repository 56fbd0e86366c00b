package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/net/ipv4"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// BenchmarkCeiling measures the generator's own ceiling: open loop, one P, against the
// bare XDP echo program on lo in generic mode, compared in the same run with a bare batched
// closed-loop UDP client, the most a single core can push through the same path. Run it pinned to
// one CPU and once (scripts/experiment-ceiling.sh does both):
//
//	taskset -c 1 go test -run '^$' -bench Ceiling -benchtime 1x ./loadgen/
//
// Five rounds alternate the bare client and the generator offered the rate the bare client just
// reached. Metrics: baseline_req/s (median bare rate), open_ratio (median of each round's
// achieved/bare; the target is at least 0.8), max_req/s (generator offered 1.5x the median:
// what it achieves when pushed), lag_p99_at_0.8_us (send lag at 0.8x the median, where the
// schedule should hold).
func BenchmarkCeiling(b *testing.B) {
	testenv.RequireRoot(b)
	port := freeUDPPort(b)
	prog, err := bpf.LoadEcho(uint16(port))
	if err != nil {
		b.Fatalf("load echo program: %v", err)
	}
	defer prog.Close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		b.Fatal(err)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: lo.Index, Flags: link.XDPGenericMode})
	if err != nil {
		b.Fatalf("attach echo program to lo (generic): %v", err)
	}
	defer l.Close()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	at := func(rate float64, d time.Duration) *Report {
		cfg := Defaults()
		cfg.Server = addr
		cfg.Rate = rate
		cfg.Conns = 1
		cfg.Batch = 64
		cfg.NoLoad = true
		cfg.GetRatio = 1
		cfg.Warmup = 300 * time.Millisecond
		cfg.Duration = d
		cfg.Timeout = 200 * time.Millisecond
		cfg.EchoReplies = true
		rep, err := Run(context.Background(), cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Errors != 0 {
			b.Fatalf("%d errors against the echo program", rep.Errors)
		}
		return rep
	}
	for b.Loop() {
		// Alternate the two clients and compare each open-loop run with the baseline measured
		// just before it: on a shared machine the capacity drifts between runs.
		const rounds = 5
		var bases, ratios []float64
		var last *Report
		for i := range rounds {
			base, err := bareClosedLoop(addr, 64, 1500*time.Millisecond)
			if err != nil {
				b.Fatal(err)
			}
			open := at(base, 1500*time.Millisecond)
			bases = append(bases, base)
			ratios = append(ratios, open.AchievedRate/base)
			last = open
			b.Logf("round %d: bare %.0f req/s; open loop offered it: achieved %.0f (%.2fx), lag p99 %.0f µs, unsent %d, timeouts %d",
				i+1, base, open.AchievedRate, open.AchievedRate/base, open.Schedule.LagP99Us, open.Schedule.Unsent, open.Timeouts)
		}
		base := median(bases)
		easy := at(0.8*base, 2*time.Second)
		pushed := at(1.5*base, 2*time.Second)
		b.ReportMetric(base, "baseline_req/s")
		b.ReportMetric(median(ratios), "open_ratio")
		b.ReportMetric(pushed.AchievedRate, "max_req/s")
		b.ReportMetric(float64(last.Schedule.Unsent), "unsent_last")
		b.ReportMetric(easy.Schedule.LagP99Us, "lag_p99_at_0.8_us")
		b.Logf("median bare %.0f req/s, median ratio %.2f; at 0.8x (%.0f req/s): achieved %.0f, lag p50 %.1f µs p99 %.1f µs, behind %v; offered 1.5x (%.0f): achieved %.0f",
			base, median(ratios), easy.OfferedRate, easy.AchievedRate, easy.Schedule.LagP50Us, easy.Schedule.LagP99Us,
			easy.Schedule.Behind, pushed.OfferedRate, pushed.AchievedRate)
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// bareClosedLoop is the simplest fast UDP client: one connected socket, window GETs sent with one
// sendmmsg, their replies read with recvmmsg, repeat. It returns replies per second.
func bareClosedLoop(addr string, window int, d time.Duration) (float64, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return 0, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c.(*net.UDPConn))
	out := make([]ipv4.Message, window)
	in := make([]ipv4.Message, window)
	for i := range out {
		req := protocol.FrameHeader{RequestID: uint16(i), Total: 1}.AppendTo(nil)
		req = append(req, fmt.Sprintf("get k%015d\r\n", i)...)
		out[i].Buffers = [][]byte{req}
		in[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	var replies int
	start := time.Now()
	for time.Since(start) < d {
		for sent := 0; sent < window; {
			n, err := pc.WriteBatch(out[sent:], 0)
			if err != nil {
				return 0, fmt.Errorf("send: %w", err)
			}
			sent += n
		}
		if err := c.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			return 0, err
		}
		for got := 0; got < window; {
			n, err := pc.ReadBatch(in, 0)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break // lost replies: the next round starts
			}
			if err != nil {
				return 0, fmt.Errorf("receive: %w", err)
			}
			got += n
			replies += n
		}
	}
	return float64(replies) / time.Since(start).Seconds(), nil
}

func freeUDPPort(tb testing.TB) int {
	tb.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
