// Command xp runs the experiments of internal/lab/experiment, as root:
// `go run ./internal/lab/experiment/cmd/xp mix|throughput|cpu|sweep|all [flags]`.
// scripts/experiment-*.sh wrap it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/xdpcache/xdpcache/internal/lab/experiment"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := experiment.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "xp:", err)
		os.Exit(1)
	}
}
