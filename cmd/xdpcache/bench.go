package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdpcache/xdpcache/loadgen"
)

func init() { rootCmd.AddCommand(newBenchCmd()) }

type benchFlags struct {
	cfg                       loadgen.Config
	load                      bool
	jsonPath, plotPath, hdrPx string
}

func newBenchCmd() *cobra.Command {
	f := benchFlags{cfg: loadgen.Defaults(), load: true}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure latency and throughput, split by who answered: the kernel or the server",
		Long: `bench sends memcached requests and reports latency per class: kernel_hit (the reply carries
the DSCP mark that serve --mark-kernel-replies sets; without --kernel-dscp, bench asks the server
for it over TCP: stats kernel_reply_dscp), user_hit, user_miss and set, plus timeouts and errors.

Open loop (--rate > 0): requests leave on a Poisson schedule at the total rate, whatever the
server does, and latency runs from each request's intended send time, so queueing and stalls are
measured rather than hidden (no coordinated omission). The generator reports its own send lag and
any requests it could not send; a WARNING line means the numbers describe the generator. Closed
loop (--rate 0): --concurrency requests always outstanding, for saturation throughput.

Before measuring, every key is set once over TCP (--load, on by default), then the workload runs
unmeasured for --warmup (and, with --warmup-settle, until the hit ratio stops moving). Ctrl-C
prints what was measured so far, marked interrupted.`,
		Example: `  xdpcache bench --server 127.0.0.1:11211 --rate 50000 --duration 30s --kernel-dscp 10
  xdpcache bench --rate 0 --concurrency 256 --key-dist uniform --json out.json --plot cdf.svg
  xdpcache bench --proto tcp --value-size 32:0.5,1000:0.5 --get-ratio 0.95`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.cfg.NoLoad = !f.load
			if !cmd.Flags().Changed("kernel-dscp") {
				f.cfg.KernelDSCP = serverReplyDSCP(cmd.Context(), f.cfg.Server, os.Stderr)
			}
			rep, err := loadgen.Run(cmd.Context(), f.cfg, os.Stderr)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			if err := rep.WriteTable(os.Stdout); err != nil {
				return err
			}
			if f.jsonPath != "" {
				if err := rep.WriteJSON(f.jsonPath); err != nil {
					return err
				}
			}
			if f.plotPath != "" {
				if err := rep.WritePlot(f.plotPath); err != nil {
					return err
				}
			}
			if f.hdrPx != "" {
				if err := rep.WriteHDR(f.hdrPx); err != nil {
					return err
				}
			}
			return nil
		},
	}
	c := &f.cfg
	fl := cmd.Flags()
	fl.StringVar(&c.Server, "server", c.Server, "memcached server HOST:PORT")
	fl.StringVar(&c.Proto, "proto", c.Proto, "udp (frame header, batched I/O, kernel hits visible) or tcp (text protocol)")
	fl.Float64Var(&c.Rate, "rate", c.Rate, "total offered requests/s on a Poisson schedule (0: closed loop)")
	fl.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "requests outstanding in closed loop (--rate 0)")
	fl.IntVar(&c.Conns, "conns", c.Conns, "sockets (UDP) or connections (TCP), each with a sending and a receiving goroutine")
	fl.DurationVar(&c.Duration, "duration", c.Duration, "measured window")
	fl.DurationVar(&c.Warmup, "warmup", c.Warmup, "unmeasured run before the window")
	fl.Float64Var(&c.WarmupSettle, "warmup-settle", 0, "also warm up until hit ratio and kernel share move by at most this per second (e.g. 0.005; 0: off)")
	fl.DurationVar(&c.WarmupMax, "warmup-max", c.WarmupMax, "longest warmup with --warmup-settle")
	fl.DurationVar(&c.Timeout, "timeout", c.Timeout, "a request unanswered this long counts as a timeout")
	fl.Uint64Var(&c.Keys, "keys", c.Keys, "key space size")
	fl.StringVar(&c.KeyDist, "key-dist", c.KeyDist, "key popularity: uniform or zipf")
	fl.Float64Var(&c.ZipfTheta, "zipf-theta", c.ZipfTheta, "Zipf exponent, any value in (0, 5)")
	fl.BoolVar(&c.KeyScramble, "key-scramble", false, "scatter popular keys over the key space instead of ranks 0, 1, 2...")
	fl.IntVar(&c.KeySize, "key-size", c.KeySize, "key length in bytes")
	fl.StringVar(&c.ValueSize, "value-size", c.ValueSize, `value bytes: "32", weighted "32:0.5,1000:0.5", or "etc" (Facebook ETC model)`)
	fl.IntVar(&c.MaxValueSize, "max-value-size", c.MaxValueSize, "clamp for drawn value sizes (UDP sets are further limited to one datagram)")
	fl.Float64Var(&c.GetRatio, "get-ratio", c.GetRatio, "fraction of requests that are GETs; the rest are sets")
	fl.BoolVar(&f.load, "load", true, "set every key once over TCP before the warmup (--load=false to skip)")
	fl.IntVar(&c.KernelDSCP, "kernel-dscp", 0, "DSCP mark of kernel replies, as serve --mark-kernel-replies (0: no kernel_hit class; default: what the server reports in stats as kernel_reply_dscp, read over TCP)")
	fl.IntVar(&c.Batch, "batch", c.Batch, "most requests per send and datagrams per receive system call")
	fl.Uint64Var(&c.Seed, "seed", 0, "random seed for keys, sizes and arrivals (0: from the clock; the report records it)")
	fl.DurationVar(&c.MaxLag, "max-lag", c.MaxLag, "p99 send lag beyond which the report warns that the generator fell behind")
	fl.StringVar(&f.jsonPath, "json", "", "write the report as JSON to FILE")
	fl.StringVar(&f.plotPath, "plot", "", "write the latency CDF per class to FILE (.png or .svg)")
	fl.StringVar(&f.hdrPx, "hdr-prefix", "", "write HdrHistogram percentile files PREFIX<class>.hgrm")
	fl.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics of the run on HOST:PORT at /metrics (empty: off)")
	// For the throughput experiment's ceiling against the bare XDP echo program; not for users.
	fl.BoolVar(&c.EchoReplies, "echo-replies", false, "count a request echoed back unchanged as a kernel hit (bare XDP echo baseline)")
	_ = fl.MarkHidden("echo-replies")
	return cmd
}

// serverReplyDSCP is the DSCP the server at addr (HOST:PORT, read over TCP whatever the benchmark's
// protocol) reports for kernel replies in stats as kernel_reply_dscp. When it cannot be read it
// says so on w and returns 0: no kernel_hit class.
func serverReplyDSCP(ctx context.Context, addr string, w io.Writer) int {
	v, err := readReplyDSCP(ctx, addr)
	switch {
	case err != nil:
		fmt.Fprintf(w, "bench: kernel replies cannot be told apart (no kernel_hit class; --kernel-dscp sets the mark): %v\n", err)
	case v == 0:
		fmt.Fprintln(w, "bench: the server reports kernel_reply_dscp 0 (replies unmarked or no kernel path): no kernel_hit class")
	default:
		fmt.Fprintf(w, "bench: kernel replies carry DSCP %d (the server's stats kernel_reply_dscp)\n", v)
	}
	return v
}

// readReplyDSCP reads stats kernel_reply_dscp from the server at addr over TCP.
func readReplyDSCP(ctx context.Context, addr string) (int, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("read the server's stats: %w", err)
	}
	defer conn.Close()
	s, err := fetchStats(conn, bufio.NewReader(conn))
	if err != nil {
		return 0, fmt.Errorf("read the server's stats: %w", err)
	}
	raw, ok := s.fields["kernel_reply_dscp"]
	if !ok {
		return 0, errors.New("the server's stats have no kernel_reply_dscp (not xdpcache serve?)")
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v < 0 || v > 63 {
		return 0, fmt.Errorf("the server's stats kernel_reply_dscp %q is not a DSCP", raw)
	}
	return v, nil
}
