package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// BenchmarkSkLayerReply measures one request in flight on one loopback TCP connection, answered
// four ways: by a userspace reader (plain socket, and with the probe programs attached but passing
// every request), by a same-length SK_SKB rewrite redirected out of the socket, and by the send-side
// build (SK_SKB marks, SK_MSG builds a reply of any length). Besides ns/op it reports the CPU spent
// per request by this process (client and reader alike, with the softirq work they trigger) and by
// every kernel thread (the programs' redirects are sent from kernel workers that belong to neither
// side), and how often the reader's thread was woken per request. scripts/sk-bench.sh prints the ratios.
func BenchmarkSkLayerReply(b *testing.B) {
	const userReply = 100
	cases := []struct {
		name   string
		setup  *probeSetup // nil: no programs
		req    string
		answer int  // reply length the client reads
		poll   bool // the reader is a goroutine on Go's netpoller, like the server, not a thread
	}{
		{"userspace", nil, "hello-0123456789abcdef\r\n", userReply, false},
		{"userspace-through-sockmap", &probeSetup{mode: probeModeMark, replyLen: userReply, attach: ebpf.AttachSkSKBVerdict, sendSide: true}, "hello-0123456789abcdef\r\n", userReply, false},
		{"kernel-same-length-rewrite", &probeSetup{mode: probeModeRewrite, replyLen: len(probeRequest), attach: ebpf.AttachSkSKBVerdict}, probeRequest, len(probeRequest), false},
		{"kernel-send-side-build", &probeSetup{mode: probeModeMark, replyLen: userReply, attach: ebpf.AttachSkSKBVerdict, sendSide: true}, probeRequest, userReply, false},
		{"userspace-netpoll", nil, "hello-0123456789abcdef\r\n", userReply, true},
		{"kernel-send-side-build-netpoll", &probeSetup{mode: probeModeMark, replyLen: userReply, attach: ebpf.AttachSkSKBVerdict, sendSide: true}, probeRequest, userReply, true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			testenv.RequireRoot(b)
			var objs *skProbeObjects
			if tc.setup != nil {
				objs = loadProbe(b, *tc.setup)
			}
			c := newProbeConn(b, objs)
			var srv *blockingReader
			if tc.poll {
				startPollReader(b, c, userReply)
			} else {
				srv = startBlockingReader(b, c, userReply)
			}
			req := []byte(tc.req)
			want := probeReply(tc.answer)
			if tc.setup == nil || tc.req != probeRequest {
				want = bytes.Repeat([]byte{'u'}, userReply)
			}
			got := make([]byte, len(want))
			cfd := blockingFD(b, c.client)
			// A reply that never comes fails the benchmark instead of blocking it.
			if err := unix.SetsockoptTimeval(cfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
				b.Fatal(err)
			}
			roundTrip := func() {
				if _, err := unix.Write(cfd, req); err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(got); {
					n, err := unix.Read(cfd, got[off:])
					if errors.Is(err, unix.EINTR) {
						continue
					}
					if err != nil || n == 0 {
						b.Fatalf("client read after %d of %d bytes: %d, %v", off, len(got), n, err)
					}
					off += n
				}
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			roundTrip()
			if !bytes.Equal(got, want) {
				b.Fatalf("reply %q, want %q", got, want)
			}
			cpu0, wakes0, csw0 := attributedCPU(b), srv.wakes(b), processSwitches(b)
			b.ResetTimer()
			for range b.N {
				roundTrip()
			}
			b.StopTimer()
			cpu, wakes, csw := attributedCPU(b)-cpu0, srv.wakes(b)-wakes0, processSwitches(b)-csw0
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
			b.ReportMetric(float64(csw)/float64(b.N), "process-switches/op")
			if srv != nil {
				b.ReportMetric(float64(wakes)/float64(b.N), "reader-wakes/op")
			}
			if objs != nil && tc.req == probeRequest {
				if r := probeCount(b, objs, probeRedirect); r != uint64(b.N)+1 {
					b.Fatalf("kernel answered %d of %d requests", r, b.N+1)
				}
			}
		})
	}
}

// BenchmarkSkLayerReplyConns is BenchmarkSkLayerReply's netpoller cases on 64 connections, each
// with one request in flight (closed loop), as a server with many clients sees it. ns/op is wall
// time over all connections, so its inverse is the throughput.
func BenchmarkSkLayerReplyConns(b *testing.B) {
	const conns, userReply = 64, 100
	for _, tc := range []struct {
		name  string
		setup *probeSetup
		req   string
	}{
		{"userspace-netpoll", nil, "hello-0123456789abcdef\r\n"},
		{"kernel-send-side-build-netpoll", &probeSetup{mode: probeModeMark, replyLen: userReply, attach: ebpf.AttachSkSKBVerdict, sendSide: true}, probeRequest},
	} {
		b.Run(tc.name, func(b *testing.B) {
			testenv.RequireRoot(b)
			var objs *skProbeObjects
			if tc.setup != nil {
				objs = loadProbe(b, *tc.setup)
			}
			cs := make([]*probeConn, conns)
			for i := range cs {
				cs[i] = newProbeConn(b, objs)
				startPollReader(b, cs[i], userReply)
			}
			run := func(perConn int) {
				var g errgroup.Group
				for _, c := range cs {
					g.Go(func() error {
						buf := make([]byte, userReply)
						c.client.SetDeadline(time.Now().Add(time.Minute))
						for range perConn {
							if _, err := c.client.Write([]byte(tc.req)); err != nil {
								return err
							}
							if _, err := io.ReadFull(c.client, buf); err != nil {
								return err
							}
						}
						return nil
					})
				}
				if err := g.Wait(); err != nil {
					b.Fatal(err)
				}
			}
			run(1)
			perConn := max(1, b.N/conns) // -benchtime as a multiple of 64 keeps ns/op exact
			cpu0, csw0 := attributedCPU(b), processSwitches(b)
			b.ResetTimer()
			run(perConn)
			b.StopTimer()
			n := float64(perConn * conns)
			b.ReportMetric(float64((attributedCPU(b)-cpu0).Microseconds())/n, "cpu-us/op")
			b.ReportMetric(float64(processSwitches(b)-csw0)/n, "process-switches/op")
			if objs != nil {
				if r := probeCount(b, objs, probeRedirect); r != uint64(perConn+1)*conns {
					b.Fatalf("kernel answered %d of %d requests", r, (perConn+1)*conns)
				}
			}
		})
	}
}

// blockingReader answers each line it reads with n 'u' bytes from a thread of its own, with
// blocking reads, so that the thread's context switches count its wake-ups.
type blockingReader struct {
	tid chan int
	id  int
}

func startBlockingReader(b *testing.B, c *probeConn, n int) *blockingReader {
	b.Helper()
	fd := blockingFD(b, c.server)
	// The read times out now and then so the reader stops even if nothing wakes it (a run once hung
	// in this cleanup).
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000}); err != nil {
		b.Fatal(err)
	}
	r := &blockingReader{tid: make(chan int, 1)}
	done := make(chan struct{})
	var stop atomic.Bool
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		r.tid <- unix.Gettid()
		buf := make([]byte, 4096)
		reply := bytes.Repeat([]byte{'u'}, n)
		for {
			got, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				if stop.Load() {
					return
				}
				continue
			}
			if err != nil || got == 0 {
				return
			}
			for range bytes.Count(buf[:got], []byte{'\n'}) {
				if _, err := unix.Write(fd, reply); err != nil {
					return
				}
			}
		}
	}()
	b.Cleanup(func() {
		stop.Store(true)
		unix.Shutdown(fd, unix.SHUT_RDWR)
		<-done
	})
	r.id = <-r.tid
	return r
}

// startPollReader is startBlockingReader's reader as the server's is: a goroutine reading the
// net.TCPConn, parked on Go's netpoller between reads.
func startPollReader(b *testing.B, c *probeConn, n int) {
	b.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		reply := bytes.Repeat([]byte{'u'}, n)
		for {
			got, err := c.server.Read(buf)
			if err != nil {
				return
			}
			for range bytes.Count(buf[:got], []byte{'\n'}) {
				if _, err := c.server.Write(reply); err != nil {
					return
				}
			}
		}
	}()
	b.Cleanup(func() {
		c.server.Close()
		<-done
	})
}

// processSwitches is this process's voluntary context switches so far, every thread.
func processSwitches(b *testing.B) int64 {
	b.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Nvcsw
}

// wakes is the reader thread's voluntary context switches so far; 0 without a thread.
func (r *blockingReader) wakes(b *testing.B) int {
	b.Helper()
	if r == nil {
		return 0
	}
	s, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", r.id))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no voluntary_ctxt_switches in the thread's status")
	return 0
}

// blockingFD is a blocking duplicate of the connection's socket, closed with the benchmark.
func blockingFD(b *testing.B, c interface{ File() (*os.File, error) }) int {
	b.Helper()
	f, err := c.File()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// attributedCPU is the CPU time this process and every kernel thread have used so far. The
// machine is shared, so /proc/stat's totals would count other programs; what a request costs is
// here: the process (its softirq work on loopback runs in its own context, and without
// IRQ_TIME_ACCOUNTING is charged to it) and the kernel threads (the workers that send redirected
// skbs, ksoftirqd). Kernel threads are read from /proc/PID/schedstat (run time in ns); threads that
// exit in between are lost, which only lowers the figure.
func attributedCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	total := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // exited
		}
		// Fields after the parenthesised command: state, ppid, ...
		rest := string(st[bytes.LastIndexByte(st, ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 || (f[1] != "2" && pid != 2) {
			continue
		}
		ss, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			continue
		}
		ns, err := strconv.ParseInt(strings.Fields(string(ss))[0], 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		total += time.Duration(ns)
	}
	return total
}
