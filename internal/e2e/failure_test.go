package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Failure tests against the real binary (docs/DESIGN.md invariants 5 and 6): kill -9, SIGTERM, and a
// write flood under -m.

// fillKernel sets keys over TCP and gets each over UDP until the kernel answers it.
func fillKernel(t *testing.T, r *rig, keys []string, value string) {
	t.Helper()
	tc := r.dialText(t)
	g := r.udpGetter(t, 500*time.Millisecond)
	for _, k := range keys {
		if got, err := tc.line(fmt.Sprintf("set %s 0 0 %d\r\n%s\r\n", k, len(value), value)); err != nil || got != "STORED" {
			t.Fatalf("set %s: %q %v", k, got, err)
		}
		want := fmt.Sprintf("VALUE %s 0 %d\r\n%s\r\nEND\r\n", k, len(value), value)
		kernel := false
		for i := 0; i < 5 && !kernel; i++ { // the first get fills, the next is the kernel's
			reply, k2, err := g.do("get " + k + "\r\n")
			if err != nil || reply != want {
				t.Fatalf("get %s: %q %v, want %q", k, reply, err, want)
			}
			kernel = k2
		}
		if !kernel {
			t.Fatalf("the kernel never answered %s", k)
		}
	}
}

// TestServeKill9 kills serve with SIGKILL: at the moment the process is gone, no XDP program is
// attached and a UDP get for a key the kernel was serving gets no reply. A restarted serve starts
// empty (misses), then serves new sets, from userspace and then the kernel.
func TestServeKill9(t *testing.T) {
	r := newBareRig(t)
	p := r.startServe(t)
	keys := []string{"k9:a", "k9:b", "k9:c"}
	fillKernel(t, r, keys, "before")

	if err := p.signal(t, syscall.SIGKILL, 5*time.Second); err == nil {
		t.Fatal("serve exited cleanly from SIGKILL")
	}
	// No wait, no retry: the program must be gone when the process is.
	if r.xdpAttached(t) {
		t.Fatal("an XDP program is still attached after serve was killed")
	}
	g := r.udpGetter(t, 300*time.Millisecond)
	for _, k := range keys {
		reply, kernel, err := g.do("get " + k + "\r\n")
		if err == nil || kernel {
			t.Fatalf("get %s after kill -9: %q (kernel %v), want no reply", k, reply, kernel)
		}
		var op *net.OpError
		if !errors.Is(err, errUDPTimeout) && !errors.As(err, &op) { // timeout or port unreachable
			t.Fatalf("get %s after kill -9: %v", k, err)
		}
	}

	r.startServe(t)
	g = r.udpGetter(t, time.Second)
	for _, k := range keys {
		if reply, kernel, err := g.do("get " + k + "\r\n"); err != nil || reply != "END\r\n" || kernel {
			t.Fatalf("get %s after restart: %q kernel %v err %v, want a miss from the server", k, reply, kernel, err)
		}
	}
	fillKernel(t, r, keys, "after")
}

// TestServeSIGTERM sends SIGTERM while the server is in the middle of a reply its client has not
// read yet: the reply and every other request already read are answered in full, serve exits 0,
// and the program is detached.
func TestServeSIGTERM(t *testing.T) {
	r := newBareRig(t)
	p := r.startServe(t)
	tc := r.dialText(t)
	big := strings.Repeat("b", 500<<10)
	if got, err := tc.line(fmt.Sprintf("set big 0 0 %d\r\n%s\r\n", len(big), big)); err != nil || got != "STORED" {
		t.Fatalf("set big: %q %v", got, err)
	}
	before := tc.stat(t, "cmd_get")

	// 40 gets of 500 KB (20 MB of replies) in one write, not read yet: the server blocks mid-reply.
	slow := r.dialText(t)
	slow.conn.(*net.TCPConn).SetReadBuffer(4096)
	const n = 40
	if _, err := slow.conn.Write([]byte(strings.Repeat("get big\r\n", n))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for tc.stat(t, "cmd_get") == before {
		if time.Now().After(deadline) {
			t.Fatal("the server never started on the pipelined gets")
		}
		time.Sleep(5 * time.Millisecond)
	}
	exited := make(chan error, 1)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() {
		select {
		case <-p.done:
			exited <- p.err
		case <-time.After(15 * time.Second):
			exited <- errors.New("serve still running 15 s after SIGTERM")
		}
	}()

	// Now read: every reply whole, then the server closes the connection.
	_ = slow.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := 0
	for {
		hdr, err := slow.r.ReadString('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d replies: %v", got, err)
		}
		if hdr != fmt.Sprintf("VALUE big 0 %d\r\n", len(big)) {
			t.Fatalf("reply %d starts %q", got, hdr)
		}
		body := make([]byte, len(big)+len("\r\nEND\r\n"))
		if _, err := io.ReadFull(slow.r, body); err != nil {
			t.Fatalf("reply %d cut short after SIGTERM: %v", got, err)
		}
		if string(body) != big+"\r\nEND\r\n" {
			t.Fatalf("reply %d corrupt", got)
		}
		got++
	}
	if got != n {
		t.Errorf("%d of %d replies before close, want all of them", got, n)
	}
	if err := <-exited; err != nil {
		t.Fatalf("serve after SIGTERM: %v, want exit code 0", err)
	}
	if r.xdpAttached(t) {
		t.Fatal("XDP program still attached after serve exited")
	}
}

// TestServeMemoryBound floods serve -m 64 with 1 KB sets (256 MiB, 4x the limit) while filling
// the kernel cache (1024 entries) with more keys than it holds. Resident memory stays under
// 224 MiB (3.5 x -m), below the 256 MiB written, so the store keeps no more than its limit: the
// live heap is the 64 MiB of items plus their bookkeeping, Go's default GOGC=100 lets the heap reach
// twice the live set before collecting, and the runtime, buffers and binary add some 30 MiB.
// Measured peaks: 156-174 MiB. Evictions are counted, and the kernel cache never holds more than
// its entry limit.
func TestServeMemoryBound(t *testing.T) {
	r := newBareRig(t)
	const kernelEntries = 1024
	p := r.startServe(t, "-m", "64", "--kernel-cache-entries", fmt.Sprint(kernelEntries))
	const (
		conns    = 4
		perConn  = 64 << 10 // 4 x 64 K x 1 KB = 256 MiB, 4 x the limit
		pipeline = 64
		limit    = 224 << 20
	)
	value := strings.Repeat("v", 1000)
	errc := make(chan error, conns)
	for c := 0; c < conns; c++ {
		tc := r.dialText(t)
		go func(c int) {
			_ = tc.conn.SetDeadline(time.Now().Add(60 * time.Second))
			var req strings.Builder
			for i := 0; i < perConn; i += pipeline {
				req.Reset()
				for j := i; j < i+pipeline; j++ {
					fmt.Fprintf(&req, "set flood:%d:%d 0 0 %d noreply\r\n%s\r\n", c, j, len(value), value)
				}
				if _, err := tc.conn.Write([]byte(req.String())); err != nil {
					errc <- err
					return
				}
			}
			// A request with a reply: every set before it has been applied when it comes back.
			got, err := tc.line("mn\r\n")
			if err == nil && got != "MN" {
				err = fmt.Errorf("mn: %q", got)
			}
			errc <- err
		}(c)
	}
	// Meanwhile, more distinct keys through the kernel path than the kernel cache holds.
	g := r.udpGetter(t, 300*time.Millisecond)
	tc := r.dialText(t)
	fillKernel := func(prefix string) {
		for i := 0; i < 2*kernelEntries; i++ {
			k := fmt.Sprintf("%s:%d", prefix, i)
			if _, err := tc.line(fmt.Sprintf("set %s 0 0 2 noreply\r\nhi\r\nmn\r\n", k)); err != nil {
				t.Fatal(err)
			}
			g.do("get " + k + "\r\n") // fills; losses do not matter here
		}
	}
	fillKernel("hot")
	var peak int64
	done := 0
	for done < conns {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("flood: %v", err)
			}
			done++
		case <-time.After(50 * time.Millisecond):
		}
		peak = max(peak, p.rss(t))
		if e := r.metric(t, "xdpcache_kernel_cache_entries"); e > kernelEntries {
			t.Fatalf("kernel cache holds %v entries, limit %d", e, kernelEntries)
		}
	}
	peak = max(peak, p.rss(t))
	t.Logf("peak RSS %d MiB for 256 MiB written under -m 64", peak>>20)
	if peak > limit {
		t.Errorf("peak RSS %d MiB, want under %d MiB", peak>>20, limit>>20)
	}
	if ev := tc.stat(t, "evictions"); ev < conns*perConn/2 {
		t.Errorf("evictions = %d after writing 4x the memory limit", ev)
	}
	if b := tc.stat(t, "bytes"); b > 64<<20 {
		t.Errorf("item bytes %d over -m 64", b)
	}
	// The flood evicts the hot keys from the store (and so from the kernel) as fast as they
	// come, by a share that depends on timing; filled again once it is over, the kernel cache
	// must be in use up to its limit, and no further.
	fillKernel("after")
	if e := r.metric(t, "xdpcache_kernel_cache_entries"); e > kernelEntries || e < kernelEntries/2 {
		t.Errorf("kernel cache entries %v after the flood, want at most %d and the cache in use", e, kernelEntries)
	}
}
