package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// testServer is a Server listening on loopback TCP and UDP ports chosen by the kernel.
type testServer struct {
	*Server
	tcpAddr string
	udpAddr string
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	if cfg.Version == "" {
		cfg.Version = "xdpcache-test"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen tcp: %v", err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- s.ServeTCP(ln) }()
	go func() { errc <- s.ServeUDP(uc) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for i := 0; i < 2; i++ {
			// ErrServerClosed: the goroutine reached Serve only after Shutdown, as one a test
			// never used can (a TCP-only test ends before the UDP goroutine runs).
			if err := <-errc; err != nil && !errors.Is(err, ErrServerClosed) {
				t.Errorf("serve returned %v after Shutdown", err)
			}
		}
		_ = uc.Close()
	})
	return &testServer{Server: s, tcpAddr: ln.Addr().String(), udpAddr: uc.LocalAddr().String()}
}

// textClient speaks the raw text protocol over one TCP connection.
type textClient struct {
	t    testing.TB
	addr string
	conn net.Conn
	r    *bufio.Reader
}

func dialText(t testing.TB, addr string) *textClient {
	t.Helper()
	c := &textClient{t: t, addr: addr}
	c.redial()
	t.Cleanup(func() { _ = c.conn.Close() })
	return c
}

func (c *textClient) redial() {
	c.t.Helper()
	if c.conn != nil {
		_ = c.conn.Close()
	}
	conn, err := net.DialTimeout("tcp", c.addr, 2*time.Second)
	if err != nil {
		c.t.Fatalf("dial %s: %v", c.addr, err)
	}
	c.conn, c.r = conn, bufio.NewReader(conn)
}

// roundTrip sends req followed by "mn\r\n" and returns everything before the "MN\r\n" reply.
func (c *textClient) roundTrip(req string) string {
	c.t.Helper()
	_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, req+"mn\r\n"); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	var out []byte
	buf := make([]byte, 64<<10)
	for !bytes.HasSuffix(out, []byte("MN\r\n")) {
		n, err := c.r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			c.t.Fatalf("read after %q: %v (got %q)", req, err, out)
		}
	}
	return string(out[:len(out)-4])
}

// untilClose sends req and returns everything the server sends before closing; it reconnects.
func (c *textClient) untilClose(req string) string {
	c.t.Helper()
	_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, req); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	out, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		var oe *net.OpError
		if !errors.As(err, &oe) {
			c.t.Fatalf("read until close after %q: %v", req, err)
		}
	}
	c.redial()
	return string(out)
}

// udpClient sends memcached UDP requests and reassembles replies.
type udpClient struct {
	t    testing.TB
	conn *net.UDPConn
	id   uint16
}

func dialUDP(t testing.TB, addr string) *udpClient {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatalf("resolve %s: %v", addr, err)
	}
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatalf("dial udp %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &udpClient{t: t, conn: conn, id: 100}
}

// send writes one request datagram with the frame header.
func (u *udpClient) send(id uint16, payload string) {
	u.t.Helper()
	d := protocol.FrameHeader{RequestID: id, Total: 1}.AppendTo(nil)
	if _, err := u.conn.Write(append(d, payload...)); err != nil {
		u.t.Fatalf("send udp: %v", err)
	}
}

// roundTrip sends req in one datagram, then a sentinel "mn" datagram, and returns the payloads of
// every reply datagram for req concatenated in order, plus the number of messages.
func (u *udpClient) roundTrip(req string) (string, int) {
	u.t.Helper()
	u.id += 2
	id, sentinel := u.id, u.id+1
	u.send(id, req)
	u.send(sentinel, "mn\r\n")
	var out []byte
	msgs := 0
	buf := make([]byte, 70000)
	_ = u.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := u.conn.Read(buf)
		if err != nil {
			u.t.Fatalf("udp read after %q: %v", req, err)
		}
		h, err := protocol.ParseFrameHeader(buf[:n])
		if err != nil {
			u.t.Fatalf("udp reply: %v", err)
		}
		if h.RequestID == sentinel {
			return string(out), msgs
		}
		if h.RequestID != id {
			continue // a late reply to an earlier request
		}
		if h.Seq == 0 {
			msgs++
		}
		out = append(out, buf[protocol.FrameHeaderLen:n]...)
	}
}

// be16 is for building raw frame headers in tests.
func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func quote(s string) string {
	if len(s) > 300 {
		return fmt.Sprintf("%q...(%d bytes)", s[:300], len(s))
	}
	return fmt.Sprintf("%q", s)
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
