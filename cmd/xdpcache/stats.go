package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(newStatsCmd()) }

func newStatsCmd() *cobra.Command {
	var (
		addr     string
		interval time.Duration
		count    int
		raw      bool
	)
	cmd := &cobra.Command{
		Use:     "stats",
		Aliases: []string{"top"},
		Short:   "Live view of a running server: kernel and userspace hits, hit ratio, kernel share, rates",
		Long: `stats asks a running server for memcached's "stats" over TCP every --interval and prints
request rates split by who answered: the XDP program in the kernel or the Go server. get_hits and
cmd_get include kernel-served keys; kernel_get_hits breaks them out. kfill/s and kevict/s are
the kernel cache's churn: entries installed, and live entries dropped for others (evictions
close to fills: the kernel cache is too small for the hot set).

Against plain memcached it works too (the kernel columns stay at zero).`,
		Example: `  xdpcache stats --server 127.0.0.1:11211
  xdpcache stats --count 1 --raw     # one snapshot of every field`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval <= 0 {
				return fmt.Errorf("--interval must be positive, got %s", interval)
			}
			return watchStats(cmd.Context(), cmd.OutOrStdout(), addr, interval, count, raw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "server", "127.0.0.1:11211", "server TCP address HOST:PORT")
	f.DurationVar(&interval, "interval", time.Second, "time between samples")
	f.IntVar(&count, "count", 0, "stop after this many samples (0: until interrupted)")
	f.BoolVar(&raw, "raw", false, "print every stats field of each sample instead of the summary")
	return cmd
}

type statsSample struct {
	at     time.Time
	fields map[string]string
}

func (s statsSample) num(name string) float64 {
	v, _ := strconv.ParseFloat(s.fields[name], 64)
	return v
}

// fetchStats sends "stats" on conn and reads the STAT lines up to END.
func fetchStats(conn net.Conn, r *bufio.Reader) (statsSample, error) {
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "stats\r\n"); err != nil {
		return statsSample{}, fmt.Errorf("send stats: %w", err)
	}
	s := statsSample{at: time.Now(), fields: map[string]string{}}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return statsSample{}, fmt.Errorf("read stats: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "END" {
			return s, nil
		}
		parts := strings.SplitN(line, " ", 3)
		if len(parts) != 3 || parts[0] != "STAT" {
			return statsSample{}, fmt.Errorf("unexpected stats line %q", line)
		}
		s.fields[parts[1]] = parts[2]
	}
}

func watchStats(ctx context.Context, out io.Writer, addr string, interval time.Duration, count int, raw bool) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)

	prev, err := fetchStats(conn, r)
	if err != nil {
		return err
	}
	if !raw {
		fmt.Fprintf(out, "%-8s %10s %10s %10s %10s %8s %8s %10s %8s %8s %8s\n",
			"time", "get/s", "kernel/s", "user/s", "miss/s", "hit%", "kernel%", "set/s", "kfill/s", "kevict/s", "conns")
	}
	for n := 1; count == 0 || n <= count; n++ {
		if raw {
			printRaw(out, prev)
			if count != 0 && n >= count {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
		cur, err := fetchStats(conn, r)
		if err != nil {
			return err
		}
		if !raw {
			fmt.Fprintln(out, formatRates(prev, cur))
		}
		prev = cur
	}
	return nil
}

// formatRates renders one summary line from the difference of two samples.
func formatRates(prev, cur statsSample) string {
	dt := cur.at.Sub(prev.at).Seconds()
	if dt <= 0 {
		dt = 1
	}
	rate := func(name string) float64 { return (cur.num(name) - prev.num(name)) / dt }
	gets, hits, kernel, misses := rate("cmd_get"), rate("get_hits"), rate("kernel_get_hits"), rate("get_misses")
	hitPct, kernelPct := 0.0, 0.0
	if gets > 0 {
		hitPct = 100 * hits / gets
		kernelPct = 100 * kernel / gets
	}
	return fmt.Sprintf("%-8s %10.0f %10.0f %10.0f %10.0f %7.1f%% %7.1f%% %10.0f %8.0f %8.0f %8s",
		cur.at.Format("15:04:05"), gets, kernel, hits-kernel, misses, hitPct, kernelPct,
		rate("cmd_set"), rate("kernel_fills"), rate("kernel_evictions"), cur.fields["curr_connections"])
}

func printRaw(out io.Writer, s statsSample) {
	names := make([]string, 0, len(s.fields))
	for k := range s.fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(out, "%s %s\n", k, s.fields[k])
	}
	fmt.Fprintln(out)
}
