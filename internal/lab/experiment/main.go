package experiment

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ErrUsage marks a bad command line.
var ErrUsage = errors.New("experiment: usage")

// common holds the options every experiment takes. Each flag defaults to an environment variable,
// so `make experiment` and the scripts pass parameters as VAR=value.
type common struct {
	bin       string
	out       string // results folder for this run; "" means results/<name>-TIME
	base      string // default for out when running all of them
	serverCPU int
	clientCPU int
	stdout    io.Writer
	log       io.Writer
}

// experiments maps a name to its runner.
var experiments = map[string]func(ctx context.Context, c *common, args []string) error{
	"mix":        runMix,
	"throughput": runThroughput,
	"cpu":        runCPU,
	"sweep":      runSweep,
}

// Main runs `xp NAME [flags]`: one experiment, or "all" of them in order, each into its own
// results folder. Results go to stdout, progress to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		return fmt.Errorf("%w: xp mix|throughput|cpu|sweep|all [flags] (xp NAME -h lists the flags)", ErrUsage)
	}
	names := []string{args[0]}
	if args[0] == "all" {
		names = []string{"mix", "throughput", "cpu", "sweep"}
	}
	for _, name := range names {
		fn, ok := experiments[name]
		if !ok {
			return fmt.Errorf("%w: unknown experiment %q", ErrUsage, name)
		}
		c := &common{stdout: stdout, log: stderr}
		if len(names) > 1 && os.Getenv("OUT") != "" {
			c.base = filepath.Join(os.Getenv("OUT"), name) // one folder each under OUT
		}
		if err := fn(ctx, c, args[1:]); err != nil {
			return fmt.Errorf("experiment %s: %w", name, err)
		}
	}
	return nil
}

// flags returns a flag set with the common options registered.
func (c *common) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&c.bin, "bin", env("BIN", "bin/xdpcache"), "xdpcache binary (env BIN)")
	if c.base == "" {
		c.base = os.Getenv("OUT")
	}
	fs.StringVar(&c.out, "out", c.base, "results folder (env OUT; default results/"+name+"-TIME)")
	fs.IntVar(&c.serverCPU, "server-cpu", envInt("SERVER_CPU", 0), "CPU for the server and its veth's NAPI thread (env SERVER_CPU)")
	fs.IntVar(&c.clientCPU, "client-cpu", envInt("CLIENT_CPU", 1), "CPU for bench and its veth's NAPI thread (env CLIENT_CPU)")
	return fs
}

// start makes the results folder and the lb, and says so.
func (c *common) start(name string) (*Lab, string, error) {
	dir := c.out
	if dir == "" {
		dir = filepath.Join("results", name+"-"+time.Now().Format("20060102-150405"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("create results folder: %w", err)
	}
	if _, err := os.Stat(c.bin); err != nil {
		return nil, "", fmt.Errorf("%w: xdpcache binary: %w (go build -o bin/xdpcache ./cmd/xdpcache)", ErrSetup, err)
	}
	lb, err := NewLab(c.bin, c.serverCPU, c.clientCPU, c.log)
	if err != nil {
		return nil, "", err
	}
	c.progress("%s: results in %s; server on CPU %d, client on CPU %d; %s", name, dir, c.serverCPU, c.clientCPU, loadavg())
	return lb, dir, nil
}

func (c *common) progress(format string, args ...any) {
	fmt.Fprintf(c.log, format+"\n", args...)
}

// summary writes the final figures to stdout and to dir/summary.txt.
func (c *common) summary(dir, text string) error {
	fmt.Fprint(c.stdout, text)
	if err := os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(text), 0o644); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

// loadavg describes the machine's state for the record.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if f, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil {
		return f
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}
