package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdpcache/xdpcache/internal/lab/demo"
)

func init() { rootCmd.AddCommand(newDemoCmd()) }

func newDemoCmd() *cobra.Command {
	cfg := demo.Config{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the kernel path end to end: namespaces, serve with native XDP, a Zipf load, the latency split",
		Long: `demo creates a server and a client network namespace joined by a veth pair, starts
"xdpcache serve" in the server namespace with the XDP program in native mode and kernel replies
marked (DSCP 46), runs "xdpcache bench" from the client namespace with a Zipf workload, and prints
the latency of kernel hits, userspace hits, misses and sets side by side with the kernel share. JSON
and a latency plot go under --results. Everything it created is removed on exit, Ctrl-C included.

Without root or network namespaces it falls back to generic XDP on lo, then to userspace only, and
says why.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own binary: %w", err)
			}
			cfg.Binary = bin
			if cfg.ResultsDir == "" {
				cfg.ResultsDir = filepath.Join("results", "demo-"+time.Now().Format("20060102-150405"))
			}
			return demo.Run(cmd.Context(), cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ResultsDir, "results", "", "folder for bench.json, bench.png and serve.log (default results/demo-TIME)")
	f.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured phase")
	f.DurationVar(&cfg.Warmup, "warmup", 3*time.Second, "warm-up before measuring (fills the kernel cache)")
	f.IntVar(&cfg.Rate, "rate", 20000, "offered requests per second (open loop, Poisson)")
	f.IntVar(&cfg.Keys, "keys", 10000, "key space")
	f.Float64Var(&cfg.ZipfTheta, "zipf-theta", 0.99, "Zipf skew of key popularity")
	f.IntVar(&cfg.ValueSize, "value-size", 64, "value bytes")
	f.Float64Var(&cfg.GetRatio, "get-ratio", 0.95, "share of GETs; the rest are SETs")
	f.IntVar(&cfg.Port, "port", 11211, "server TCP and UDP port")
	f.StringVar(&cfg.Force, "force", "", "skip the fallback chain: veth, lo or userspace")
	return cmd
}
