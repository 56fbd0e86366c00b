package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/net/ipv4"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// BenchmarkCeiling measures the generator's own ceiling (issue #4): open loop, one P, against the
// bare XDP echo program on lo in generic mode, compared in the same run with a bare batched
// closed-loop UDP client, the most a single core can push through the same path. Run it pinned to
// one CPU and once (scripts/experiment-ceiling.sh does both):
//
//	taskset -c 1 go test -run '^$' -bench Ceiling -benchtime 1x ./loadgen/
//
// Metrics: baseline_req/s (bare client), open_req/s (generator offered the baseline rate),
// open_ratio (their ratio; the issue asks for at least 0.8), max_req/s (generator offered 1.5x
// the baseline: what it achieves when pushed), lag_p99_us and unsent at the baseline rate, and
// lag_p99_at_0.8_us, the send lag at 0.8x the baseline, where the schedule should hold.
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

	for b.Loop() {
		base, err := bareClosedLoop(addr, 64, 2*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		at := func(rate float64) *Report {
			cfg := Defaults()
			cfg.Server = addr
			cfg.Rate = rate
			cfg.Conns = 1
			cfg.Batch = 64
			cfg.NoLoad = true
			cfg.GetRatio = 1
			cfg.Warmup = 500 * time.Millisecond
			cfg.Duration = 3 * time.Second
			cfg.Timeout = 200 * time.Millisecond
			cfg.echoReplies = true
			rep, err := Run(context.Background(), cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Errors != 0 {
				b.Fatalf("%d errors against the echo program", rep.Errors)
			}
			return rep
		}
		open := at(base)
		pushed := at(1.5 * base)
		easy := at(0.8 * base)
		b.ReportMetric(base, "baseline_req/s")
		b.ReportMetric(open.AchievedRate, "open_req/s")
		b.ReportMetric(open.AchievedRate/base, "open_ratio")
		b.ReportMetric(pushed.AchievedRate, "max_req/s")
		b.ReportMetric(open.Schedule.LagP99Us, "lag_p99_us")
		b.ReportMetric(float64(open.Schedule.Unsent), "unsent")
		b.ReportMetric(easy.Schedule.LagP99Us, "lag_p99_at_0.8_us")
		b.Logf("baseline %.0f req/s; open loop at it: %.0f req/s (%.2fx), lag p99 %.0f µs, unsent %d, timeouts %d, behind %v; offered %.0f: achieved %.0f",
			base, open.AchievedRate, open.AchievedRate/base, open.Schedule.LagP99Us, open.Schedule.Unsent, open.Timeouts, open.Schedule.Behind,
			pushed.OfferedRate, pushed.AchievedRate)
		b.Logf("at 0.8x the baseline (%.0f req/s): achieved %.0f, lag p50 %.1f µs p99 %.1f µs, behind %v",
			easy.OfferedRate, easy.AchievedRate, easy.Schedule.LagP50Us, easy.Schedule.LagP99Us, easy.Schedule.Behind)
	}
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
