package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/server"
)

// nullKernel stands for an attached kernel path: the server reports the reply mark only with one.
type nullKernel struct{}

func (nullKernel) Invalidate(string) error            { return nil }
func (nullKernel) Offer(server.KernelItem) error      { return nil }
func (nullKernel) Flush(time.Time) error              { return nil }
func (nullKernel) Stats() (server.KernelStats, error) { return server.KernelStats{}, nil }

// startStatsServer runs a server on TCP only until the test ends and returns it and its address.
func startStatsServer(t *testing.T, cfg server.Config) (*server.Server, string) {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTCP(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv, ln.Addr().String()
}

// closedAddr is a TCP address of 127.0.0.1 where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// addrOf is a server's address alone.
func addrOf(_ *server.Server, addr string) string { return addr }

func TestServerReplyDSCP(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name, addr string
		want       int
		says       string
	}{
		{"marked", addrOf(startStatsServer(t, server.Config{Kernel: nullKernel{}, KernelReplyDSCP: 46})), 46, "DSCP 46"},
		{"unmarked", addrOf(startStatsServer(t, server.Config{Kernel: nullKernel{}})), 0, "kernel_reply_dscp 0"},
		// The mark means nothing without a kernel path: the server reports 0.
		{"no kernel path", addrOf(startStatsServer(t, server.Config{KernelReplyDSCP: 46})), 0, "kernel_reply_dscp 0"},
		{"memcached", testenv.StartMemcached(t, false).Addr, 0, "no kernel_reply_dscp"},
		{"no server", closedAddr(t), 0, "connection refused"},
	} {
		var stderr bytes.Buffer
		if got := serverReplyDSCP(ctx, c.addr, &stderr); got != c.want {
			t.Errorf("%s: mark %d, want %d", c.name, got, c.want)
		}
		if !strings.Contains(stderr.String(), c.says) {
			t.Errorf("%s: stderr %q does not say %q", c.name, stderr.String(), c.says)
		}
	}
}

// bench without --kernel-dscp runs with the mark the server reports; an explicit flag wins.
func TestBenchKernelDSCPFromStats(t *testing.T) {
	_, addr := startStatsServer(t, server.Config{Kernel: nullKernel{}, KernelReplyDSCP: 46})
	for _, c := range []struct {
		extra []string
		want  int
	}{
		{nil, 46},
		{[]string{"--kernel-dscp", "5"}, 5},
		{[]string{"--kernel-dscp", "0"}, 0},
	} {
		out := filepath.Join(t.TempDir(), "bench.json")
		cmd := newBenchCmd()
		cmd.SetArgs(append([]string{"--server", addr, "--proto", "tcp", "--rate", "200", "--duration", "200ms",
			"--warmup", "0s", "--keys", "10", "--json", out}, c.extra...))
		cmd.SetOut(&bytes.Buffer{})
		if err := cmd.ExecuteContext(context.Background()); err != nil {
			t.Fatalf("bench %v: %v", c.extra, err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Config struct {
				KernelDSCP int `json:"kernel_dscp"`
			} `json:"config"`
		}
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatalf("bench JSON: %v", err)
		}
		if rep.Config.KernelDSCP != c.want {
			t.Errorf("bench %v ran with kernel DSCP %d, want %d", c.extra, rep.Config.KernelDSCP, c.want)
		}
	}
}
