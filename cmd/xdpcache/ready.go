package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdpcache/xdpcache/internal/health"
)

func init() { rootCmd.AddCommand(newReadyCmd()) }

func newReadyCmd() *cobra.Command {
	var addr string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "ready",
		Short: "Wait until a running serve is ready (its /readyz answers 200)",
		Long: `ready polls /readyz on a serve's --metrics-addr until it answers 200 (serving every transport
asked for and, with --xdp-iface, the kernel path attached), and exits 0; after --timeout it exits 1
with the last reason. For service managers without an HTTP client: the systemd unit runs it as
ExecStartPost and after a reload.`,
		Example: `  xdpcache ready --metrics-addr 127.0.0.1:9150 --timeout 30s`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			hc := &http.Client{Timeout: time.Second}
			if err := health.WaitReady(ctx, hc, "http://"+addr, 200*time.Millisecond); err != nil {
				return fmt.Errorf("not ready: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "ready")
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "metrics-addr", "127.0.0.1:9150", "the serve's --metrics-addr")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	return cmd
}
