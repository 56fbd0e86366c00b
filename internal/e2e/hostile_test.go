package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/server"
)

// Hostile clients against the server in-process on loopback (docs/DESIGN.md invariant 6): slow
// partial lines, clients that never read, oversized get lines, and floods past -c. Each test
// shows the server's memory stays bounded and that a well-behaved client keeps being served.

// loopServer runs a server on a loopback TCP port and returns it with its address.
func loopServer(t *testing.T, cfg server.Config) (*server.Server, string) {
	t.Helper()
	s, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.ServeTCP(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := <-errc; err != nil {
			t.Errorf("ServeTCP after Shutdown: %v", err)
		}
	})
	return s, ln.Addr().String()
}

// dialLoop opens a text connection to addr.
func dialLoop(t *testing.T, addr string) *textClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &textClient{conn: conn, r: bufio.NewReader(conn)}
}

// probe checks that a well-behaved client is served: a set and a get, each within limit.
func probe(t *testing.T, c *textClient, i int, limit time.Duration) {
	t.Helper()
	key, val := "probe"+strconv.Itoa(i%7), strconv.Itoa(i)
	begin := time.Now()
	if got, err := c.line(fmt.Sprintf("set %s 0 0 %d\r\n%s\r\n", key, len(val), val)); err != nil || got != "STORED" {
		t.Fatalf("probe set: %q %v", got, err)
	}
	res, err := c.gets(key)
	if err != nil || !res.found || res.value != val {
		t.Fatalf("probe get: %+v %v", res, err)
	}
	if d := time.Since(begin); d > limit {
		t.Fatalf("probe %d took %v, want under %v", i, d, limit)
	}
}

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// counter reads one labelled counter from reg.
func counter(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{reason=%q}", name, reason)
	return 0
}

// Slow partial lines from many connections: each holds one 16 KiB buffer and nothing more, and
// the server keeps answering others. With an idle timeout they are closed even though they keep
// trickling bytes, since no request completes.
func TestHostileSlowloris(t *testing.T) {
	for _, idle := range []time.Duration{0, 300 * time.Millisecond} {
		t.Run("idle="+idle.String(), func(t *testing.T) {
			const conns = 200
			reg := prometheus.NewRegistry()
			_, addr := loopServer(t, server.Config{ConnLimit: conns + 10, IdleTimeout: idle, Registry: reg})
			before := heapInuse()
			var slow []net.Conn
			for i := 0; i < conns; i++ {
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				defer c.Close()
				slow = append(slow, c)
			}
			good := dialLoop(t, addr)
			stop := time.Now().Add(time.Second)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				line := []byte("get " + strings.Repeat("k", 1000))
				for j := 0; j < len(line) && time.Now().Before(stop); j++ {
					for _, c := range slow {
						_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
						c.Write(line[j : j+1]) // errors once the server closed it
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()
			for i := 0; time.Now().Before(stop); i++ {
				probe(t, good, i, 500*time.Millisecond)
			}
			wg.Wait()
			grown := int64(heapInuse()) - int64(before)
			// A connection costs its 16 KiB read buffer, a session and bookkeeping; 64 KiB is generous.
			if limit := int64(conns * 64 << 10); grown > limit {
				t.Errorf("heap grew %d bytes for %d slow connections, want under %d", grown, conns, limit)
			}
			open := 0
			wait := time.Now().Add(100 * time.Millisecond)
			for _, c := range slow {
				_ = c.SetReadDeadline(wait)
				_, err := c.Read(make([]byte, 1))
				if errors.Is(err, io.EOF) {
					continue
				}
				open++
			}
			switch {
			case idle == 0 && open != conns:
				t.Errorf("%d of %d slow connections closed without an idle timeout", conns-open, conns)
			case idle > 0 && open != 0:
				t.Errorf("%d of %d slow connections outlived the %v idle timeout", open, conns, idle)
			}
			if got := counter(t, reg, "xdpcache_tcp_closed_total", "idle"); idle > 0 && got != conns || idle == 0 && got != 0 {
				t.Errorf("xdpcache_tcp_closed_total{reason=idle} = %v", got)
			}
		})
	}
}

// A client that pipelines gets of a large value and never reads: the server's buffered replies
// stay bounded (one flush, 256 KiB plus an item) while it waits, others are served, and after the
// write timeout the connection is closed.
func TestHostileNeverReads(t *testing.T) {
	reg := prometheus.NewRegistry()
	const wt = time.Second
	s, addr := loopServer(t, server.Config{WriteTimeout: wt, Registry: reg})
	good := dialLoop(t, addr)
	big := strings.Repeat("v", 100<<10)
	if got, err := good.line(fmt.Sprintf("set big 0 0 %d\r\n%s\r\n", len(big), big)); err != nil || got != "STORED" {
		t.Fatalf("set big: %q %v", got, err)
	}
	before := heapInuse()

	bad, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	// Small socket buffers so the server blocks soon; 20 K gets would be 2 GB of replies.
	bad.(*net.TCPConn).SetReadBuffer(4096)
	reqs := bytes.Repeat([]byte("get big\r\n"), 20_000)
	sent := make(chan error, 1)
	go func() {
		_ = bad.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err := bad.Write(reqs)
		sent <- err
	}()
	begin := time.Now()
	var peak int64
	for i := 0; time.Since(begin) < wt/2; i++ {
		probe(t, good, i, 500*time.Millisecond)
		if i%50 == 0 {
			peak = max(peak, int64(heapInuse())-int64(before))
		}
	}
	// The stuck connection holds at most its read buffer and one flush of replies.
	if limit := int64(4 << 20); peak > limit {
		t.Errorf("heap grew %d bytes while a client did not read, want under %d", peak, limit)
	}
	// The server gives up on it within the write timeout (plus scheduling slack).
	deadline := time.Now().Add(wt + 3*time.Second)
	for counter(t, reg, "xdpcache_tcp_closed_total", "write_timeout") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("connection not closed %v after its client stopped reading", time.Since(begin))
		}
		time.Sleep(20 * time.Millisecond)
	}
	<-sent
	if got := s.Stats()["curr_connections"]; got != "1" {
		t.Errorf("curr_connections = %s after the stuck client was closed, want 1", got)
	}
	probe(t, good, 0, 500*time.Millisecond)
}

// A million keys in one get: the line limit (2 MiB for gets) closes the connection, memory does
// not follow the line, and the next client is served. A get of a thousand keys is answered whole.
func TestHostileMillionKeyGet(t *testing.T) {
	s, addr := loopServer(t, server.Config{})
	good := dialLoop(t, addr)
	keys := make([]string, 1_000_000)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	line := "get " + strings.Join(keys, " ") + "\r\n"
	before := heapInuse()

	bad, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	go func() {
		_ = bad.SetWriteDeadline(time.Now().Add(5 * time.Second))
		bad.Write([]byte(line)) // fails once the server hangs up
	}()
	_ = bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, err := io.ReadAll(bad)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("server neither answered nor closed a %d-byte get line", len(line))
	}
	if bytes.Contains(reply, []byte("VALUE")) || bytes.Contains(reply, []byte("END")) {
		t.Fatalf("server answered a %d-byte get line: %q", len(line), reply[:min(len(reply), 100)])
	}
	// The line is 6.9 MB; the server buffers at most its 2 MiB bound (a 4 MiB buffer).
	if grown := int64(heapInuse()) - int64(before); grown > 8<<20 {
		t.Errorf("heap grew %d bytes after a %d-byte get line", grown, len(line))
	}
	probe(t, good, 0, 500*time.Millisecond)

	// A thousand keys, a few present: answered in full.
	good.line("set k7 0 0 1\r\nx\r\n")
	_ = good.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := good.conn.Write([]byte("get " + strings.Join(keys[:1000], " ") + "\r\n")); err != nil {
		t.Fatal(err)
	}
	v, err := good.r.ReadString('\n')
	if err != nil || v != "VALUE k7 0 1\r\n" {
		t.Fatalf("1000-key get: %q %v", v, err)
	}
	good.r.ReadString('\n')
	if end, err := good.r.ReadString('\n'); err != nil || end != "END\r\n" {
		t.Fatalf("1000-key get ends %q %v", end, err)
	}
	_ = s
}

// Many connections each sending a long unfinished get: grown read buffers stay within
// ReadBufferLimit; connections that would pass it get memcached's out-of-memory reply and are closed.
func TestHostileReadBufferLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	const limit = 8 << 20
	_, addr := loopServer(t, server.Config{ReadBufferLimit: limit, Registry: reg})
	const conns = 12
	// 1.5 MB without a newline: each buffer grows to 2 MiB, so four fit.
	part := []byte("get " + strings.Repeat("key ", 1_500_000/4))
	var wg sync.WaitGroup
	replies := make([]string, conns)
	var held []net.Conn
	for i := 0; i < conns; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Long enough for a refusal to arrive on a busy machine: a refused connection whose
			// reply came after the deadline would count as held, and the counts disagree.
			_ = c.SetDeadline(time.Now().Add(4 * time.Second))
			c.Write(part)
			b, _ := io.ReadAll(c) // the refused are closed; the others time out
			replies[i] = string(b)
		}(i)
	}
	good := dialLoop(t, addr)
	for i := 0; i < 20; i++ {
		probe(t, good, i, 2*time.Second)
	}
	wg.Wait()
	refused := 0
	for _, r := range replies {
		switch r {
		case "SERVER_ERROR out of memory reading request\r\n":
			refused++
		case "":
		default:
			t.Errorf("unexpected reply %q", r[:min(len(r), 80)])
		}
	}
	if refused < conns-limit/(2<<20) {
		t.Errorf("%d of %d connections refused, want at least %d", refused, conns, conns-limit/(2<<20))
	}
	if got := counter(t, reg, "xdpcache_tcp_closed_total", "read_buffer"); int(got) != refused {
		t.Errorf("xdpcache_tcp_closed_total{reason=read_buffer} = %v, want %d", got, refused)
	}
	for _, c := range held {
		c.Close()
	}
	probe(t, good, 0, time.Second)
}

// A flood of connections past -c: the limit holds throughout, the extra ones get memcached's
// refusal, and once the flood ends a new client is served.
func TestHostileConnFlood(t *testing.T) {
	const limit = 32
	s, addr := loopServer(t, server.Config{ConnLimit: limit})
	good := dialLoop(t, addr)
	probe(t, good, 0, time.Second)

	stop := make(chan struct{})
	var peak int
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _ := strconv.Atoi(s.Stats()["curr_connections"])
			peak = max(peak, n)
			time.Sleep(time.Millisecond)
		}
	}()
	const flood = 300
	var conns []net.Conn
	refused := 0
	for i := 0; i < flood; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		b, _ := io.ReadAll(c)
		if string(b) == "ERROR Too many open connections\r\n" {
			refused++
		}
	}
	close(stop)
	sampler.Wait()
	if peak > limit {
		t.Errorf("curr_connections reached %d, limit %d", peak, limit)
	}
	if want := flood - (limit - 1); refused != want {
		t.Errorf("%d connections refused, want %d", refused, want)
	}
	probe(t, good, 1, time.Second)
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats()["curr_connections"] != "1" {
		if time.Now().After(deadline) {
			t.Fatalf("curr_connections = %s after the flood closed", s.Stats()["curr_connections"])
		}
		time.Sleep(5 * time.Millisecond)
	}
	probe(t, dialLoop(t, addr), 2, time.Second)
}

// Not a reflector, userspace side, over the veth pair: a client whose source is outside the
// allow-list gets no reply, so its key is never offered to the kernel either; the refusals are
// counted. The same client inside the list is answered.
func TestUDPSourceOutsideAllowList(t *testing.T) {
	r := newRig(t, "always")
	// Only the server's own address may ask: the client namespace is outside.
	r.restartServerWith(t, server.Config{Kernel: r.kernel,
		AllowSources: []netip.Prefix{netip.PrefixFrom(netns.ServerIPv4, 32), netip.PrefixFrom(netns.ServerIPv6, 128)}})
	tc := r.dialText(t)
	if got, err := tc.line("set spoofed 0 0 5\r\nhello\r\n"); err != nil || got != "STORED" {
		t.Fatalf("TCP set: %q %v", got, err)
	}
	hits := r.kernelHits(t)
	g := r.udpGetter(t, 200*time.Millisecond)
	const n = 5
	for i := 0; i < n; i++ {
		if reply, kernel, err := g.do("get spoofed\r\n"); !errors.Is(err, errUDPTimeout) {
			t.Fatalf("get from outside the allow-list: %q kernel %v err %v, want no reply", reply, kernel, err)
		}
	}
	if got := r.srv.Refused()["source"]; got != n {
		t.Errorf("refused[source] = %d, want %d", got, n)
	}
	if got := r.kernelHits(t) - hits; got != 0 {
		t.Errorf("the kernel answered %d gets for a key no allowed client asked for", got)
	}

	r.restartServerWith(t, server.Config{Kernel: r.kernel,
		AllowSources: []netip.Prefix{netip.PrefixFrom(netns.ClientIPv4, 32), netip.PrefixFrom(netns.ClientIPv6, 128)}})
	tc = r.dialText(t)
	tc.line("set spoofed 0 0 5\r\nhello\r\n")
	g = r.udpGetter(t, time.Second)
	if reply, _, err := g.do("get spoofed\r\n"); err != nil || reply != "VALUE spoofed 0 5\r\nhello\r\nEND\r\n" {
		t.Fatalf("get from inside the allow-list: %q %v", reply, err)
	}
}
