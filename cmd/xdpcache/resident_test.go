package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// BenchmarkResidentVsMemcached loads the same items over TCP into `xdpcache serve` and Debian's
// memcached, both with -m 2048, and reports each one's resident memory (VmRSS) once loaded and
// again after a pause, and the ratio. Items: RESIDENT_ITEMS (default 3 M) of 16-byte keys and
// RESIDENT_VALUE-byte values (default 200).
func BenchmarkResidentVsMemcached(b *testing.B) {
	items := envInt(b, "RESIDENT_ITEMS", 3_000_000)
	valueSize := envInt(b, "RESIDENT_VALUE", 200)
	mc := testenv.LookPath(b, "memcached")
	bin := filepath.Join(b.TempDir(), "xdpcache")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	for b.Loop() {
		results := map[string][2]float64{}
		for _, name := range []string{"memcached", "xdpcache"} {
			port := testenv.FreePort(b)
			p := strconv.Itoa(port)
			var cmd *exec.Cmd
			if name == "memcached" {
				cmd = exec.Command(mc, "-l", "127.0.0.1", "-p", p, "-U", "0", "-m", "2048", "-t", "2", "-u", "root")
			} else {
				cmd = exec.Command(bin, "serve", "-l", "127.0.0.1", "-p", p, "-U", "0", "-m", "2048")
			}
			cmd.Stderr = os.Stderr
			if err := testenv.StartChild(cmd); err != nil {
				b.Fatalf("start %s: %v", name, err)
			}
			addr := net.JoinHostPort("127.0.0.1", p)
			loaded, settled := func() (float64, float64) {
				defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
				waitListening(b, addr)
				load(b, addr, items, valueSize)
				if got := currItems(b, addr); got != items {
					b.Fatalf("%s holds %d items, want %d", name, got, items)
				}
				loaded := vmRSS(b, cmd.Process.Pid)
				time.Sleep(10 * time.Second)
				return loaded, vmRSS(b, cmd.Process.Pid)
			}()
			results[name] = [2]float64{loaded, settled}
			b.Logf("%s: %d items of %d B: VmRSS %.0f MiB loaded, %.0f MiB 10 s later", name, items, valueSize, loaded, settled)
		}
		b.ReportMetric(results["xdpcache"][0], "xdpcache-MiB")
		b.ReportMetric(results["memcached"][0], "memcached-MiB")
		b.ReportMetric(results["xdpcache"][0]/results["memcached"][0], "loaded-ratio")
		b.ReportMetric(results["xdpcache"][1]/results["memcached"][1], "settled-ratio")
	}
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func waitListening(b *testing.B, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s never listened: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// load stores items over 4 connections, in pipelined batches of noreply sets, each batch ended
// by a meta no-op whose reply says the batch was applied.
func load(b *testing.B, addr string, items, valueSize int) {
	const conns, batch = 4, 500
	value := strings.Repeat("v", valueSize)
	var wg sync.WaitGroup
	for w := range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			var buf []byte
			for start := w * batch; start < items; start += conns * batch {
				buf = buf[:0]
				for i := start; i < min(start+batch, items); i++ {
					buf = fmt.Appendf(buf, "set key:%012d 0 0 %d noreply\r\n%s\r\n", i, valueSize, value)
				}
				buf = append(buf, "mn\r\n"...)
				if _, err := c.Write(buf); err != nil {
					b.Error(err)
					return
				}
				if line, err := r.ReadString('\n'); err != nil || line != "MN\r\n" {
					b.Errorf("batch at %d: %q, %v", start, line, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

func currItems(b *testing.B, addr string) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("stats\r\n")); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReader(c)
	n := -1
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		if line == "END\r\n" {
			return n
		}
		if f := strings.Fields(line); len(f) == 3 && f[1] == "curr_items" {
			n, _ = strconv.Atoi(f[2])
		}
	}
}

// vmRSS is pid's resident set in MiB, from /proc/PID/status.
func vmRSS(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
