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
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
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
			if err := <-errc; err != nil {
				t.Errorf("serve returned %v after Shutdown", err)
			}
		}
		_ = uc.Close()
	})
	return &testServer{Server: s, tcpAddr: ln.Addr().String(), udpAddr: uc.LocalAddr().String()}
}

// freePort returns a port free for both TCP and UDP on 127.0.0.1 at the time of the call.
func freePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		_ = ln.Close()
		if err == nil {
			_ = uc.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// startMemcached runs Debian's memcached on a free loopback port (TCP and UDP) for the test.
// One worker thread keeps UDP replies in request order, as our server sends them.
func startMemcached(t testing.TB, extra ...string) (tcpAddr, udpAddr string) {
	t.Helper()
	bin := testenv.LookPath(t, "memcached")
	port := freePort(t)
	args := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", strconv.Itoa(port), "-t", "1"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	args = append(args, extra...)
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start memcached: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("memcached did not start on %s: %v (stderr: %s)", addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, addr
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
