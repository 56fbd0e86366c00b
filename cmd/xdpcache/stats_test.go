package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/server"
)

func TestFormatRatesSplitsKernelAndUser(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	prev := statsSample{at: t0, fields: map[string]string{
		"cmd_get": "100", "get_hits": "80", "kernel_get_hits": "50", "get_misses": "20", "cmd_set": "0",
		"kernel_fills": "10", "kernel_evictions": "4"}}
	cur := statsSample{at: t0.Add(2 * time.Second), fields: map[string]string{
		"cmd_get": "2100", "get_hits": "1880", "kernel_get_hits": "1250", "get_misses": "220",
		"cmd_set": "200", "curr_connections": "3", "kernel_fills": "84", "kernel_evictions": "18"}}
	line := formatRates(prev, cur)
	// 2000 gets in 2 s: 1000/s, of which kernel 600/s, user hits 300/s, misses 100/s, sets 100/s;
	// kernel cache fills 37/s, evictions 7/s.
	for _, want := range []string{" 1000 ", " 600 ", " 300 ", " 100 ", "90.0%", "60.0%", "12:00:02", " 37 ", " 7 "} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
}

// TestWatchStatsAgainstServer runs the live view against a real server: after 3 gets (2 hits, 1
// miss) between two samples the summary line shows them, and --raw prints memcached's fields.
func TestWatchStatsAgainstServer(t *testing.T) {
	srv, addr := startStatsServer(t, server.Config{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "set k 0 0 1\r\nv\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- watchStats(context.Background(), &out, addr, 1500*time.Millisecond, 1, false)
	}()
	// Send the gets once the live view has connected (and so taken its first sample at once),
	// well inside its interval.
	for deadline := time.Now().Add(5 * time.Second); srv.Stats()["curr_connections"] != "2"; {
		if time.Now().After(deadline) {
			t.Fatal("the live view never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := io.WriteString(c, "get k\r\nget k\r\nget nope\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("watchStats: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "kernel/s") {
		t.Fatalf("want a header and one sample, got:\n%s", out.String())
	}
	// 3 gets between the samples: hit ratio 66.7%, kernel share 0%.
	if !strings.Contains(lines[1], "66.7%") || !strings.Contains(lines[1], "0.0%") {
		t.Errorf("sample line %q: want a 66.7%% hit ratio and 0.0%% kernel share", lines[1])
	}

	out.Reset()
	if err := watchStats(context.Background(), &out, addr, time.Millisecond, 1, true); err != nil {
		t.Fatalf("watchStats --raw: %v", err)
	}
	for _, field := range []string{"cmd_get 3", "get_hits 2", "get_misses 1", "curr_items 1"} {
		if !strings.Contains(out.String(), field+"\n") {
			t.Errorf("raw output lacks %q:\n%s", field, out.String())
		}
	}
}

func TestWatchStatsNoServer(t *testing.T) {
	addr := closedAddr(t)
	err := watchStats(context.Background(), io.Discard, addr, time.Second, 1, false)
	if err == nil || !strings.Contains(err.Error(), "connect to "+addr) {
		t.Fatalf("no server: err %v, want a connect error naming the address", err)
	}
}
