package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{MemoryLimit: -1},
		{MaxItemSize: 100},
		{MemoryLimit: 1 << 20, MaxItemSize: 2 << 20},
		{ConnLimit: -1},
		{MaxDatagram: 8},
		{MaxDatagram: 70000},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func TestUDPFraming(t *testing.T) {
	s := startServer(t, Config{MaxDatagram: 200})
	c := dialText(t, s.tcpAddr)
	big := strings.Repeat("v", 1000)
	c.roundTrip("set big 3 0 1000\r\n" + big + "\r\nset a 0 0 1\r\nx\r\n")

	out := s.HandleDatagram(udpReq(0xABCD, "get big a nokey\r\n"))
	var payload []byte
	for i, d := range out {
		h, err := protocol.ParseFrameHeader(d)
		if err != nil || h.RequestID != 0xABCD || int(h.Seq) != i || int(h.Total) != len(out) || len(d) > 200 {
			t.Fatalf("datagram %d: header %+v, %d bytes, of %d", i, h, len(d), len(out))
		}
		payload = append(payload, d[protocol.FrameHeaderLen:]...)
	}
	want := "VALUE big 3 1000\r\n" + big + "\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
	if string(payload) != want {
		t.Fatalf("reassembled %q", payload)
	}

	// Two requests in one datagram: one message each.
	out = s.HandleDatagram(udpReq(1, "get a\r\nget a\r\n"))
	if len(out) != 2 || !bytes.Equal(out[0], out[1]) {
		t.Fatalf("two requests gave %q", out)
	}
	// A datagram ending inside a data block gets nothing, like memcached.
	if out := s.HandleDatagram(udpReq(1, "get a\r\nset b 0 0 5\r\nab")); out != nil {
		t.Fatalf("truncated set answered %q", out)
	}
	// A trailing partial line is ignored; the complete request before it is answered.
	if out := s.HandleDatagram(udpReq(1, "get a\r\nget a")); len(out) != 1 {
		t.Fatalf("partial line: %q", out)
	}
	// noreply: no datagram at all.
	if out := s.HandleDatagram(udpReq(1, "set q 0 0 1 noreply\r\nq\r\n")); out != nil {
		t.Fatalf("noreply answered %q", out)
	}
}

func TestConnLimit(t *testing.T) {
	s := startServer(t, Config{ConnLimit: 2})
	a, b := dialText(t, s.tcpAddr), dialText(t, s.tcpAddr)
	a.roundTrip("")
	b.roundTrip("")
	conn, err := net.Dial("tcp", s.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(conn)
	if string(got) != tooManyConns {
		t.Fatalf("third connection got %q, want %q then close", got, tooManyConns)
	}
	if st := s.Stats(); st["rejected_connections"] != "1" || st["curr_connections"] != "2" {
		t.Fatalf("stats rejected=%s curr=%s", st["rejected_connections"], st["curr_connections"])
	}
	// Once one closes, a new connection is served.
	a.untilClose("quit\r\n")
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats()["curr_connections"] != "2" || s.st.rejectedConns.Load() > 1 {
		if time.Now().After(deadline) {
			t.Fatal("connection count did not settle")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := a.roundTrip("get x\r\n"); got != "END\r\n" {
		t.Fatalf("after a slot freed: %q", got)
	}
}

func TestShutdown(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), testenv.IgnoreStoreClock())
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	tcpErr, udpErr := make(chan error, 1), make(chan error, 1)
	go func() { tcpErr <- s.ServeTCP(ln) }()
	go func() { udpErr <- s.ServeUDP(uc) }()
	c := dialText(t, ln.Addr().String())
	c.roundTrip("set a 0 0 1\r\nx\r\n")
	// A request already sent when Shutdown starts is answered before the connection closes.
	if _, err := c.conn.Write([]byte("get a\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-tcpErr; err != nil {
		t.Fatalf("ServeTCP returned %v after Shutdown, want nil", err)
	}
	// The UDP goroutine, unused here, may reach ServeUDP only after Shutdown: ErrServerClosed.
	if err := <-udpErr; err != nil && !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeUDP returned %v after Shutdown", err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, _ := io.ReadAll(c.r)
	if string(rest) != "VALUE a 0 1\r\nx\r\nEND\r\n" {
		t.Fatalf("in-flight reply %q", rest)
	}
	if err := s.ServeTCP(ln); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeTCP after Shutdown: %v", err)
	}
	_ = c.conn.Close()
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s := startServer(t, Config{Registry: reg})
	c := dialText(t, s.tcpAddr)
	c.roundTrip("set a 0 0 1\r\nx\r\nget a b\r\nget a\r\ndelete zz\r\nbogus\r\n")
	u := dialUDP(t, s.udpAddr)
	u.roundTrip("get a\r\n")

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	counter := func(name string, labels map[string]string) float64 {
		mf := byName[name]
		if mf == nil {
			t.Fatalf("no metric %s", name)
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
		}
		return -1
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"xdpcache_commands_total", map[string]string{"command": "get", "status": "hit"}, 3},
		{"xdpcache_commands_total", map[string]string{"command": "get", "status": "miss"}, 1},
		{"xdpcache_commands_total", map[string]string{"command": "set", "status": "stored"}, 1},
		{"xdpcache_commands_total", map[string]string{"command": "delete", "status": "not_found"}, 1},
		{"xdpcache_commands_total", map[string]string{"command": "other", "status": "error"}, 1},
		{"xdpcache_items", nil, 1},
		{"xdpcache_connections", nil, 1},
		{"xdpcache_connections_total", nil, 1},
		{"xdpcache_udp_requests_total", nil, 2},
	}
	for _, c := range checks {
		if got := counter(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	h := byName["xdpcache_request_duration_seconds"]
	if h == nil {
		t.Fatal("no request duration histogram")
	}
	var count uint64
	// Requests timed by transport and command: five over TCP (set, two gets, delete and an
	// unknown command), one get over UDP, and the test client's mn marker on each.
	byLabels := map[string]uint64{}
	for _, m := range h.GetMetric() {
		hist := m.GetHistogram()
		count += hist.GetSampleCount()
		var proto, command string
		for _, lp := range m.GetLabel() {
			switch lp.GetName() {
			case "proto":
				proto = lp.GetValue()
			case "command":
				command = lp.GetValue()
			}
		}
		byLabels[proto+" "+command] += hist.GetSampleCount()
		if b := hist.GetBucket(); len(b) == 0 || b[0].GetUpperBound() > 2e-6 {
			t.Fatalf("first bucket %v: want microsecond buckets", b)
		}
		if hist.GetSchema() == 0 && hist.GetZeroThreshold() == 0 && len(hist.GetPositiveSpan()) == 0 {
			t.Fatal("no native histogram")
		}
	}
	if count != 8 {
		t.Fatalf("%d requests timed, want 8: %v", count, byLabels)
	}
	for k, want := range map[string]uint64{"tcp set": 1, "tcp get": 2, "tcp delete": 1, "tcp other": 1, "tcp mn": 1, "udp get": 1, "udp mn": 1} {
		if byLabels[k] != want {
			t.Errorf("request duration {proto command} %q: %d samples, want %d (all: %v)", k, byLabels[k], want, byLabels)
		}
	}
}

func TestStatsGroups(t *testing.T) {
	s := startServer(t, Config{Version: "xdpcache-9.9"})
	c := dialText(t, s.tcpAddr)
	c.roundTrip("set a 0 0 1\r\nx\r\n")
	if got := c.roundTrip("stats items\r\n"); !strings.Contains(got, "STAT items:1:number 1\r\n") {
		t.Fatalf("stats items: %q", got)
	}
	if got := c.roundTrip("stats slabs\r\n"); !strings.Contains(got, "STAT active_slabs 1\r\n") {
		t.Fatalf("stats slabs: %q", got)
	}
	if got := c.roundTrip("stats settings\r\n"); !strings.Contains(got, "STAT item_size_max 1048576\r\n") {
		t.Fatalf("stats settings: %q", got)
	}
	if got := c.roundTrip("version\r\n"); got != "VERSION 1.6.18 xdpcache-9.9\r\n" {
		t.Fatalf("version: %q", got)
	}
	c.roundTrip("get a\r\n")
	if st := s.Stats(); st["get_hits"] != "1" || st["cmd_set"] != "1" {
		t.Fatalf("stats before reset: %v", st)
	}
	if got := c.roundTrip("stats reset\r\n"); got != "RESET\r\n" {
		t.Fatalf("stats reset: %q", got)
	}
	if st := s.Stats(); st["get_hits"] != "0" || st["curr_items"] != "1" {
		t.Fatalf("stats after reset: get_hits=%s curr_items=%s", st["get_hits"], st["curr_items"])
	}
	if got := c.roundTrip("me a\r\n"); !strings.HasPrefix(got, "ME a exp=-1 la=") || !strings.Contains(got, " fetch=yes cls=1 size=58\r\n") {
		t.Fatalf("me: %q", got)
	}
	if got := c.roundTrip("me nokey\r\n"); got != "EN\r\n" {
		t.Fatalf("me miss: %q", got)
	}
}

func TestMemoryLimitEvicts(t *testing.T) {
	s := startServer(t, Config{MemoryLimit: 2 << 20, MaxItemSize: 64 << 10})
	c := dialText(t, s.tcpAddr)
	val := strings.Repeat("x", 10000)
	var req strings.Builder
	for i := 0; i < 1000; i++ {
		req.WriteString("set k" + strings.Repeat("0", 3) + string(rune('a'+i%26)) + strconv.Itoa(i) + " 0 0 10000 noreply\r\n" + val + "\r\n")
	}
	c.roundTrip(req.String())
	st := s.Stats()
	if st["evictions"] == "0" {
		t.Fatal("no evictions past the memory limit")
	}
	if b := s.Store().Stats().Bytes; b > 2<<20 {
		t.Fatalf("store holds %d bytes over a 2 MiB limit", b)
	}
}
