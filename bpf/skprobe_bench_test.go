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

// A replyCase is one way of answering the benchmark's requests on one loopback TCP connection.
type replyCase struct {
	name   string
	setup  *probeSetup // nil: no programs
	req    string
	answer int    // reply length the client reads
	poll   bool   // the reader is a goroutine on Go's netpoller, like the server, not a thread
	base   string // the case this one is compared with
}

// replyRun is a prepared replyCase and what its segments have measured so far.
type replyRun struct {
	replyCase
	objs      *skProbeObjects
	c         *probeConn
	reader    *blockingReader
	roundTrip func(n int) int // about n requests, one in flight per connection; returns how many
	reqs      int
	wall, cpu time.Duration
	switches  int64
	wakes     int
}

// segment runs n requests of r and adds what they cost.
func (r *replyRun) segment(b *testing.B, n int) {
	cpu0, sw0, wk0, t0 := attributedCPU(b), processSwitches(b), r.reader.wakes(b), time.Now()
	done := r.roundTrip(n)
	r.wall += time.Since(t0)
	r.cpu += attributedCPU(b) - cpu0
	r.switches += processSwitches(b) - sw0
	r.wakes += r.reader.wakes(b) - wk0
	r.reqs += done
}

// runInterleaved runs b.N requests of every case in segments of seg requests, alternating the
// cases' order every round (ABBA), so that all see the same machine: this one is shared, and
// figures taken one case after another would compare different background loads. It reports per
// case the time and CPU per request and their ratios to the case's base.
func runInterleaved(b *testing.B, runs []*replyRun, seg int) {
	for _, r := range runs {
		r.roundTrip(1) // warm up; checks the reply
	}
	b.ResetTimer()
	for round := 0; runs[0].reqs < b.N; round++ {
		n := min(seg, b.N-runs[0].reqs)
		for i := range runs {
			if round%2 == 1 {
				i = len(runs) - 1 - i
			}
			runs[i].segment(b, n)
		}
	}
	b.StopTimer()
	byName := map[string]*replyRun{}
	for _, r := range runs {
		byName[r.name] = r
	}
	per := func(r *replyRun, d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(r.reqs) }
	for _, r := range runs {
		b.ReportMetric(per(r, r.wall), r.name+"-us/req")
		b.ReportMetric(per(r, r.cpu), r.name+"-cpu-us/req")
		b.ReportMetric(float64(r.switches)/float64(r.reqs), r.name+"-switches/req")
		if r.reader != nil {
			b.ReportMetric(float64(r.wakes)/float64(r.reqs), r.name+"-reader-wakes/req")
		}
		if base := byName[r.base]; base != nil && base != r {
			b.ReportMetric(float64(r.wall)/float64(base.wall), r.name+"-time-ratio")
			b.ReportMetric(float64(r.cpu)/float64(base.cpu), r.name+"-cpu-ratio")
		}
	}
}

// prepare loads the case's programs, opens its connections and starts their readers.
func prepare(b *testing.B, tc replyCase, conns int) *replyRun {
	b.Helper()
	const userReply = 100
	r := &replyRun{replyCase: tc}
	if tc.setup != nil {
		r.objs = loadProbe(b, *tc.setup)
	}
	want := bytes.Repeat([]byte{'u'}, userReply)
	if tc.req == probeRequest {
		want = probeReply(tc.answer)
	}
	if conns == 1 {
		r.c = newProbeConn(b, r.objs)
		if tc.poll {
			startPollReader(b, r.c, userReply)
		} else {
			r.reader = startBlockingReader(b, r.c, userReply)
		}
		cfd := blockingFD(b, r.c.client)
		// A reply that never comes fails the benchmark instead of blocking it.
		if err := unix.SetsockoptTimeval(cfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
			b.Fatal(err)
		}
		req, got := []byte(tc.req), make([]byte, len(want))
		r.roundTrip = func(n int) int {
			for range n {
				if _, err := unix.Write(cfd, req); err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(got); {
					m, err := unix.Read(cfd, got[off:])
					if errors.Is(err, unix.EINTR) {
						continue
					}
					if err != nil || m == 0 {
						b.Fatalf("%s: client read after %d of %d bytes: %d, %v", tc.name, off, len(got), m, err)
					}
					off += m
				}
			}
			if !bytes.Equal(got, want) {
				b.Fatalf("%s: reply %q, want %q", tc.name, got, want)
			}
			return n
		}
		return r
	}
	cs := make([]*probeConn, conns)
	for i := range cs {
		cs[i] = newProbeConn(b, r.objs)
		startPollReader(b, cs[i], userReply)
	}
	// n requests in all, n/conns on each connection at once, one in flight per connection.
	r.roundTrip = func(n int) int {
		per := max(1, n/conns)
		var g errgroup.Group
		for _, c := range cs {
			g.Go(func() error {
				got := make([]byte, len(want))
				c.client.SetDeadline(time.Now().Add(time.Minute))
				for range per {
					if _, err := c.client.Write([]byte(tc.req)); err != nil {
						return err
					}
					if _, err := io.ReadFull(c.client, got); err != nil {
						return err
					}
				}
				if !bytes.Equal(got, want) {
					return fmt.Errorf("%s: reply %q, want %q", tc.name, got, want)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		return per * conns
	}
	return r
}

// BenchmarkSkLayerReply measures one request in flight on one loopback TCP connection, answered
// by a userspace reader (plain socket, and with the probe programs attached but passing every
// request), by a same-length SK_SKB rewrite redirected out of the socket, and by the send-side
// build (SK_SKB marks, SK_MSG builds a reply of any length); the reader is a thread blocked in
// read(2), or a goroutine on the netpoller as in the server. Per case: time and CPU per request,
// the CPU counting this process (client and reader alike, with the softirq work they trigger) and
// every kernel thread (the programs' redirects are sent from kernel workers that belong to neither
// side); context switches of the process and wake-ups of the reader thread per request.
func BenchmarkSkLayerReply(b *testing.B) {
	testenv.RequireRoot(b)
	const userReply = 100
	user := "hello-0123456789abcdef\r\n"
	sendSide := &probeSetup{mode: probeModeMark, replyLen: userReply, attach: ebpf.AttachSkSKBVerdict, sendSide: true}
	cases := []replyCase{
		{"userspace", nil, user, userReply, false, "userspace"},
		{"userspace-through-sockmap", sendSide, user, userReply, false, "userspace"},
		{"same-length-rewrite", &probeSetup{mode: probeModeRewrite, replyLen: len(probeRequest), attach: ebpf.AttachSkSKBVerdict}, probeRequest, len(probeRequest), false, "userspace"},
		{"send-side-build", sendSide, probeRequest, userReply, false, "userspace"},
		{"userspace-netpoll", nil, user, userReply, true, "userspace-netpoll"},
		{"send-side-build-netpoll", sendSide, probeRequest, userReply, true, "userspace-netpoll"},
	}
	var runs []*replyRun
	for _, tc := range cases {
		runs = append(runs, prepare(b, tc, 1))
	}
	runInterleaved(b, runs, 2000)
	for _, r := range runs {
		if r.objs != nil && r.req == probeRequest {
			if got := probeCount(b, r.objs, probeRedirect); got != uint64(r.reqs)+1 {
				b.Fatalf("%s: kernel answered %d of %d requests", r.name, got, r.reqs+1)
			}
		}
	}
}

// BenchmarkSkLayerReplyConns is the netpoller cases on 64 connections, each with one request in
// flight (closed loop), as a server with many clients sees them. Time per request is wall time
// over all connections: its inverse is the throughput.
func BenchmarkSkLayerReplyConns(b *testing.B) {
	testenv.RequireRoot(b)
	const conns, userReply = 64, 100
	sendSide := &probeSetup{mode: probeModeMark, replyLen: userReply, attach: ebpf.AttachSkSKBVerdict, sendSide: true}
	runs := []*replyRun{
		prepare(b, replyCase{"userspace-netpoll", nil, "hello-0123456789abcdef\r\n", userReply, true, "userspace-netpoll"}, conns),
		prepare(b, replyCase{"send-side-build-netpoll", sendSide, probeRequest, userReply, true, "userspace-netpoll"}, conns),
	}
	runInterleaved(b, runs, 50*conns)
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
	return threadSwitches(b, r.id)
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
