// Command xdpcache is a memcached server whose UDP GET hits are answered inside the kernel by an XDP
// program. Subcommands: serve, bench, demo, stats. This package only wires flags, the logger and
// signals to the packages that do the work.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// rootCmd is the top command; each subcommand's file adds itself in an init function.
var rootCmd = &cobra.Command{
	Use:   "xdpcache",
	Short: "memcached with UDP GET hits answered in the kernel by XDP",
	Long: `xdpcache is a memcached-compatible server. With --xdp-iface, an XDP program answers UDP GET
hits for hot keys from a BPF map before the network stack runs; everything else reaches the Go
server, which keeps the kernel copy consistent with every write.`,
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "xdpcache:", err)
		os.Exit(1)
	}
}
