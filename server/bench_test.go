package server

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// Load shape of BenchmarkVsMemcached: BMC's small items (16 B keys, 32 B values).
const (
	benchKeys     = 1000
	benchValueLen = 32
	benchConns    = 4  // TCP connections, each with benchPipeline requests in flight
	benchPipeline = 16 // requests written before their replies are read
	benchUDPConns = 4  // UDP clients, each with one request in flight
)

func benchKey(i int) string { return fmt.Sprintf("key:%012d", i%benchKeys) }

// loadResult is one run of a workload against one server.
type loadResult struct {
	ops     int
	elapsed time.Duration
	lat     *hdrhistogram.Histogram // microseconds per request (per pipelined batch for TCP)
}

func (r loadResult) opsPerSec() float64 { return float64(r.ops) / r.elapsed.Seconds() }

// tcpLoad sends n requests (get or set) over benchConns pipelined connections.
func tcpLoad(b *testing.B, addr, op string, n int) loadResult {
	value := bytes.Repeat([]byte("v"), benchValueLen)
	lat := hdrhistogram.New(1, 10_000_000, 3)
	var mu sync.Mutex
	var wg sync.WaitGroup
	per := (n + benchConns - 1) / benchConns
	start := time.Now()
	for c := 0; c < benchConns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			r := bufio.NewReaderSize(conn, 64<<10)
			local := hdrhistogram.New(1, 10_000_000, 3)
			var req []byte
			var want int
			reply := make([]byte, 64<<10)
			for done := 0; done < per; done += benchPipeline {
				req, want = req[:0], 0
				for i := 0; i < benchPipeline; i++ {
					k := benchKey(c*per + done + i)
					if op == "get" {
						req = append(req, "get "+k+"\r\n"...)
						want += len(protocol.AppendValue(nil, k, 0, value, 0, false)) + len(protocol.End)
					} else {
						req = append(req, "set "+k+" 0 0 "+strconv.Itoa(benchValueLen)+"\r\n"...)
						req = append(append(req, value...), "\r\n"...)
						want += len("STORED\r\n")
					}
				}
				t0 := time.Now()
				if _, err := conn.Write(req); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(r, reply[:want]); err != nil {
					b.Error(err)
					return
				}
				_ = local.RecordValue(time.Since(t0).Microseconds())
			}
			mu.Lock()
			lat.Merge(local)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	return loadResult{ops: per * benchConns, elapsed: time.Since(start), lat: lat}
}

// udpLoad sends n single-key gets over benchUDPConns sockets, one in flight per socket.
// udpLoad sends n requests of op ("get" or "set") over UDP from benchUDPConns sockets, one in
// flight each, and records each reply's latency; a reply lost for 200 ms counts as lost.
func udpLoad(b *testing.B, addr, op string, n int) loadResult {
	lat := hdrhistogram.New(1, 10_000_000, 3)
	var mu sync.Mutex
	var wg sync.WaitGroup
	per := (n + benchUDPConns - 1) / benchUDPConns
	var lost int
	start := time.Now()
	for c := 0; c < benchUDPConns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			ua, _ := net.ResolveUDPAddr("udp", addr)
			conn, err := net.DialUDP("udp", nil, ua)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			local := hdrhistogram.New(1, 10_000_000, 3)
			buf := make([]byte, 2048)
			req := make([]byte, 0, 128)
			value := bytes.Repeat([]byte("v"), benchValueLen)
			localLost := 0
			for i := 0; i < per; i++ {
				id := uint16(i)
				req = protocol.FrameHeader{RequestID: id, Total: 1}.AppendTo(req[:0])
				if op == "set" {
					req = append(req, "set "+benchKey(c*per+i)+" 0 0 "+strconv.Itoa(benchValueLen)+"\r\n"...)
					req = append(append(req, value...), "\r\n"...)
				} else {
					req = append(req, "get "+benchKey(c*per+i)+"\r\n"...)
				}
				t0 := time.Now()
				if _, err := conn.Write(req); err != nil {
					b.Error(err)
					return
				}
				_ = conn.SetReadDeadline(t0.Add(200 * time.Millisecond))
				for {
					m, err := conn.Read(buf)
					if err != nil {
						localLost++
						break
					}
					if h, _ := protocol.ParseFrameHeader(buf[:m]); h.RequestID == id {
						_ = local.RecordValue(time.Since(t0).Microseconds())
						break
					}
				}
			}
			mu.Lock()
			lat.Merge(local)
			lost += localLost
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	if lost > n/100 {
		b.Errorf("%d of %d UDP requests lost", lost, n)
	}
	return loadResult{ops: per*benchUDPConns - lost, elapsed: time.Since(start), lat: lat}
}

func preload(b *testing.B, addr string) {
	r := tcpLoad(b, addr, "set", benchKeys)
	if r.ops < benchKeys {
		b.Fatalf("preload stored %d keys", r.ops)
	}
}

// BenchmarkVsMemcached runs the same GET and SET load against this server and against Debian's
// memcached, started here with as many worker threads as GOMAXPROCS, side by side in one run on
// loopback. It reports each one's throughput and latency and the ratio ours/memcached.
//
//	go test ./server -run '^$' -bench VsMemcached -benchtime 200000x
func BenchmarkVsMemcached(b *testing.B) {
	ours := startServer(b, Config{})
	mcAddr := testenv.StartMemcached(b, true, "-t", strconv.Itoa(runtimeProcs())).Addr
	preload(b, ours.tcpAddr)
	preload(b, mcAddr)
	workloads := []struct {
		name    string
		ourAddr string
		run     func(addr string, n int) loadResult
	}{
		{"tcp-get", ours.tcpAddr, func(addr string, n int) loadResult { return tcpLoad(b, addr, "get", n) }},
		{"tcp-set", ours.tcpAddr, func(addr string, n int) loadResult { return tcpLoad(b, addr, "set", n) }},
		{"udp-get", ours.udpAddr, func(addr string, n int) loadResult { return udpLoad(b, addr, "get", n) }},
		{"udp-set", ours.udpAddr, func(addr string, n int) loadResult { return udpLoad(b, addr, "set", n) }},
	}
	merge := func(x, y loadResult) loadResult {
		x.ops += y.ops
		x.elapsed += y.elapsed
		x.lat.Merge(y.lat)
		return x
	}
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) {
			quarter := max(b.N/4, benchConns*benchPipeline)
			b.ResetTimer()
			// ABBA order, so neither server always runs on a warmer or cooler machine.
			mcRes := w.run(mcAddr, quarter)
			ourRes := w.run(w.ourAddr, quarter)
			ourRes = merge(ourRes, w.run(w.ourAddr, quarter))
			mcRes = merge(mcRes, w.run(mcAddr, quarter))
			b.StopTimer()
			b.ReportMetric(ourRes.opsPerSec(), "xdpcache-ops/s")
			b.ReportMetric(mcRes.opsPerSec(), "memcached-ops/s")
			b.ReportMetric(ourRes.opsPerSec()/mcRes.opsPerSec(), "ratio")
			b.ReportMetric(float64(ourRes.lat.ValueAtQuantile(50)), "xdpcache-p50-us")
			b.ReportMetric(float64(ourRes.lat.ValueAtQuantile(99)), "xdpcache-p99-us")
			b.ReportMetric(float64(mcRes.lat.ValueAtQuantile(50)), "memcached-p50-us")
			b.ReportMetric(float64(mcRes.lat.ValueAtQuantile(99)), "memcached-p99-us")
		})
	}
}
