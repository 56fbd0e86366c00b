package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testenv.IgnoreSpawner()) }

func newCluster(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Requests and replies through a real memcached: plain lines, VA replies, pipelined fetches with
// flags, TTL and CAS, and a key that needs base64.
func TestServerAgainstMemcached(t *testing.T) {
	addr := testenv.StartMemcached(t, false).Addr
	c := newCluster(t, Config{Addrs: []string{addr}})
	s := c.Pick([]byte("any"))
	r, err := s.Do([]byte("set a 3 100 5\r\nhello\r\nset b 0 0 0\r\n\r\nma n N0 J7 v\r\n"), 3)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if len(r) != 3 || string(r[0]) != "STORED\r\n" || string(r[1]) != "STORED\r\n" || string(r[2]) != "VA 1\r\n7\r\n" {
		t.Fatalf("replies %q", r)
	}
	bin := []byte("k\x01y")
	if _, err := s.Do(AppendGet(nil, bin, nil)[:0], 0); err != nil {
		t.Fatalf("empty Do: %v", err)
	}
	vals, err := s.Get([][]byte{[]byte("a"), []byte("missing"), []byte("b"), bin}, nil)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	a := vals[0]
	if !a.Found || string(a.Value) != "hello" || a.Flags != 3 || a.TTL < 98 || a.TTL > 100 || a.CAS == 0 {
		t.Fatalf("a = %+v", a)
	}
	if vals[1].Found || !vals[2].Found || len(vals[2].Value) != 0 || vals[2].TTL != -1 || vals[3].Found {
		t.Fatalf("vals %+v", vals)
	}
	// The CAS is memcached's own.
	r, _ = s.Do([]byte("mg a c\r\n"), 1)
	if string(r[0]) != "HD c"+strconv.FormatUint(a.CAS, 10)+"\r\n" {
		t.Fatalf("mg a c: %q, fetched cas %d", r[0], a.CAS)
	}
	// gat through Get's touch token.
	vals, err = s.Get([][]byte{[]byte("a")}, []byte("1000"))
	if err != nil || !vals[0].Found || vals[0].TTL < 998 {
		t.Fatalf("Get with touch: %+v, %v", vals, err)
	}
	if s.Count(StatusOK) != 5 || !s.Up() {
		t.Fatalf("ok count %d, up %v", s.Count(StatusOK), s.Up())
	}
}

// A dead server fails fast, is probed in the background, and is used again once it answers.
func TestServerDownAndRecovery(t *testing.T) {
	mc := testenv.StartMemcached(t, false)
	addr := mc.Addr
	c := newCluster(t, Config{Addrs: []string{addr}, RetryInterval: 100 * time.Millisecond})
	s := c.Servers()[0]
	if _, err := s.Do([]byte("set k 0 0 1\r\nv\r\n"), 1); err != nil {
		t.Fatalf("Do: %v", err)
	}
	mc.Stop()
	if _, err := s.Do([]byte("get k\r\n"), 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Do on a killed server: %v, want ErrUnavailable", err)
	}
	if s.Up() {
		t.Fatal("still up after a failed request")
	}
	start := time.Now()
	for range 100 {
		if _, err := s.Do([]byte("version\r\n"), 1); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Do while down: %v", err)
		}
	}
	if took := time.Since(start); took > 50*time.Millisecond {
		t.Fatalf("100 requests to a down server took %v", took)
	}
	if s.Count(StatusUnavailable) != 100 || s.Count(StatusError) != 1 {
		t.Fatalf("counts: unavailable %d error %d", s.Count(StatusUnavailable), s.Count(StatusError))
	}
	mc.Start()
	deadline := time.Now().Add(3 * time.Second)
	for !s.Up() {
		if time.Now().After(deadline) {
			t.Fatal("not up 3s after the server came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r, err := s.Do([]byte("version\r\n"), 1); err != nil || !bytes.HasPrefix(r[0], []byte("VERSION ")) {
		t.Fatalf("Do after recovery: %q, %v", r, err)
	}
}

// fakeServer accepts connections and answers each line with reply(line); a nil reply answers
// nothing (a hung server).
func fakeServer(t *testing.T, reply func(line string) []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	connc := make(chan net.Conn)
	go func() {
		defer close(done)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			connc <- nc
			go func() {
				r := bufio.NewReader(nc)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if out := reply(line); out != nil {
						_, _ = nc.Write(out)
					}
				}
			}()
		}
	}()
	collect := make(chan struct{})
	go func() {
		defer close(collect)
		for nc := range connc {
			conns = append(conns, nc)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		close(connc)
		<-collect
		for _, nc := range conns {
			_ = nc.Close()
		}
	})
	return ln.Addr().String()
}

// A server that accepts but never answers costs one Timeout, then fails fast.
func TestServerTimeout(t *testing.T) {
	addr := fakeServer(t, func(string) []byte { return nil })
	c := newCluster(t, Config{Addrs: []string{addr}, Timeout: 200 * time.Millisecond, RetryInterval: time.Hour})
	s := c.Servers()[0]
	start := time.Now()
	_, err := s.Do([]byte("get k\r\n"), 1)
	took := time.Since(start)
	if !errors.Is(err, ErrUnavailable) || took < 150*time.Millisecond || took > time.Second {
		t.Fatalf("Do to a hung server: %v after %v, want ErrUnavailable after about 200ms", err, took)
	}
	if _, err := s.Do([]byte("get k\r\n"), 1); !errors.Is(err, ErrUnavailable) || s.Up() {
		t.Fatalf("second Do: %v, up %v", err, s.Up())
	}
}

// A malformed reply drops the connection but not the server.
func TestServerProtocolError(t *testing.T) {
	addr := fakeServer(t, func(line string) []byte {
		if strings.HasPrefix(line, "bad") {
			return []byte("VA x\r\n")
		}
		if strings.HasPrefix(line, "big") {
			return []byte("VA 100000000\r\n")
		}
		return []byte("HD\r\n")
	})
	c := newCluster(t, Config{Addrs: []string{addr}, MaxValueSize: 1 << 20})
	s := c.Servers()[0]
	for _, req := range []string{"bad\r\n", "big\r\n"} {
		if _, err := s.Do([]byte(req), 1); !errors.Is(err, ErrProtocol) {
			t.Fatalf("Do(%q): %v, want ErrProtocol", req, err)
		}
	}
	if r, err := s.Do([]byte("mn\r\n"), 1); err != nil || string(r[0]) != "HD\r\n" || !s.Up() {
		t.Fatalf("after protocol errors: %q, %v, up %v", r, err, s.Up())
	}
	if s.Count(StatusProtocol) != 2 {
		t.Fatalf("protocol errors counted %d", s.Count(StatusProtocol))
	}
}

func TestParseValue(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  Value
		err   bool
	}{
		{"EN\r\n", Value{}, false},
		{"VA 2 f5 t-1 c9\r\nhi\r\n", Value{Found: true, Flags: 5, TTL: -1, CAS: 9, Value: []byte("hi")}, false},
		{"VA 0 c1 f0 t30\r\n\r\n", Value{Found: true, TTL: 30, CAS: 1, Value: []byte{}}, false},
		{"VA 2 f5 t-1\r\nhi\r\n", Value{}, true},    // no CAS
		{"VA 3 f5 t-1 c9\r\nhi\r\n", Value{}, true}, // short data
		{"VA 2 fx t-1 c9\r\nhi\r\n", Value{}, true}, // bad flags
		{"SERVER_ERROR out of memory\r\n", Value{}, true},
		{"HD\r\n", Value{}, true},
	} {
		got, err := ParseValue([]byte(tc.reply))
		if (err != nil) != tc.err || (err != nil && !errors.Is(err, ErrProtocol)) {
			t.Errorf("ParseValue(%q) error %v, want error %v", tc.reply, err, tc.err)
			continue
		}
		if !tc.err && (got.Found != tc.want.Found || got.Flags != tc.want.Flags || got.TTL != tc.want.TTL ||
			got.CAS != tc.want.CAS || !bytes.Equal(got.Value, tc.want.Value)) {
			t.Errorf("ParseValue(%q) = %+v, want %+v", tc.reply, got, tc.want)
		}
	}
	if got := string(AppendGet(nil, []byte("a b"), []byte("-1"))); got != "mg YSBi b T-1 v f t c\r\n" {
		t.Errorf("AppendGet of a key with a space: %q", got)
	}
}

func TestNewChecksAddrs(t *testing.T) {
	for _, addrs := range [][]string{nil, {"nohost"}, {"h:1", "h:1"}, {":11211"}} {
		if c, err := New(Config{Addrs: addrs}); err == nil {
			_ = c.Close()
			t.Errorf("New(%q) accepted", addrs)
		}
	}
}

// The exported metrics carry every server and status, and the up gauge follows the state.
func TestMetrics(t *testing.T) {
	dead := fakeServer(t, func(string) []byte { return nil })
	live := fakeServer(t, func(string) []byte { return []byte("HD\r\n") })
	c := newCluster(t, Config{Addrs: []string{dead, live}, Timeout: 100 * time.Millisecond, RetryInterval: time.Hour})
	reg := prometheus.NewPedanticRegistry()
	if err := c.Register(reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	byAddr := map[string]*Server{}
	for _, s := range c.Servers() {
		byAddr[s.Addr()] = s
	}
	_, _ = byAddr[dead].Do([]byte("mn\r\n"), 1)
	_, _ = byAddr[live].Do([]byte("mn\r\n"), 1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				got[key] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"xdpcache_upstream_up,upstream=" + dead:                                0,
		"xdpcache_upstream_up,upstream=" + live:                                1,
		"xdpcache_upstream_requests_total,status=error,upstream=" + dead:       1,
		"xdpcache_upstream_requests_total,status=ok,upstream=" + live:          1,
		"xdpcache_upstream_requests_total,status=unavailable,upstream=" + live: 0,
		"xdpcache_upstream_request_duration_seconds,upstream=" + live:          1,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
}
