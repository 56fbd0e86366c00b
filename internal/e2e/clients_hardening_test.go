package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/server"
)

// Helpers for the hardening tests (linearizability, failure, hostile clients, soak): a plain text
// protocol client whose replies are parsed exactly, a UDP get that reuses its buffers and tells who
// answered, and a way to restart the rig's server over a different kernel cache.

// textClient speaks the memcached text protocol over one TCP connection. Not safe for concurrent use.
type textClient struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialText opens a text protocol connection from the rig's client namespace.
func (r *rig) dialText(t testing.TB) *textClient {
	t.Helper()
	return dialTextIn(t, r.pair.Client, r.addr.String())
}

// dialTextIn opens a text protocol connection to addr from inside ns.
func dialTextIn(t testing.TB, ns *netns.NS, addr string) *textClient {
	t.Helper()
	var conn net.Conn
	if err := ns.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &textClient{conn: conn, r: bufio.NewReader(conn)}
}

// errProtocol is a reply the client did not expect.
var errProtocol = errors.New("e2e: unexpected reply")

// line sends req and reads one reply line, without its "\r\n".
func (c *textClient) line(req string) (string, error) {
	_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte(req)); err != nil {
		return "", fmt.Errorf("send %q: %w", firstLine(req), err)
	}
	l, err := c.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read reply to %q: %w", firstLine(req), err)
	}
	return strings.TrimSuffix(l, "\r\n"), nil
}

// gets reads one key with its CAS unique.
func (c *textClient) gets(key string) (getResult, error) {
	_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte("gets " + key + "\r\n")); err != nil {
		return getResult{}, fmt.Errorf("send gets: %w", err)
	}
	var res getResult
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			return getResult{}, fmt.Errorf("read gets reply: %w", err)
		}
		if l == "END\r\n" {
			return res, nil
		}
		v, err := c.r.ReadString('\n')
		if err != nil {
			return getResult{}, fmt.Errorf("read gets value: %w", err)
		}
		if res, err = parseValue(l + v); err != nil {
			return getResult{}, err
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\r'); i >= 0 {
		return s[:i]
	}
	return s
}

// getResult is one key's part of a get or gets reply.
type getResult struct {
	found bool
	value string
	cas   uint64 // 0 for get
}

// parseValue reads "VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n" (one item, no END).
func parseValue(s string) (getResult, error) {
	hdr, rest, ok := strings.Cut(s, "\r\n")
	f := strings.Fields(hdr)
	if !ok || len(f) < 4 || len(f) > 5 || f[0] != "VALUE" {
		return getResult{}, fmt.Errorf("parse %q: %w", s, errProtocol)
	}
	n, err := strconv.Atoi(f[3])
	if err != nil || len(rest) != n+2 || rest[n:] != "\r\n" {
		return getResult{}, fmt.Errorf("parse %q: %w", s, errProtocol)
	}
	res := getResult{found: true, value: rest[:n]}
	if len(f) == 5 {
		if res.cas, err = strconv.ParseUint(f[4], 10, 64); err != nil {
			return getResult{}, fmt.Errorf("parse cas in %q: %w", s, errProtocol)
		}
	}
	return res, nil
}

// parseGetReply splits a whole get/gets reply into the results for keys, in order.
func parseGetReply(reply string, keys []string) ([]getResult, error) {
	out := make([]getResult, len(keys))
	rest := reply
	for {
		if rest == "END\r\n" {
			return out, nil
		}
		hdr, _, ok := strings.Cut(rest, "\r\n")
		f := strings.Fields(hdr)
		if !ok || len(f) < 4 || f[0] != "VALUE" {
			return nil, fmt.Errorf("parse reply %q: %w", reply, errProtocol)
		}
		n, err := strconv.Atoi(f[3])
		if err != nil || len(rest) < len(hdr)+2+n+2 {
			return nil, fmt.Errorf("parse reply %q: %w", reply, errProtocol)
		}
		item := rest[:len(hdr)+2+n+2]
		res, err := parseValue(item)
		if err != nil {
			return nil, err
		}
		i := indexOf(keys, f[1])
		if i < 0 || out[i].found {
			return nil, fmt.Errorf("reply %q names key %q: %w", reply, f[1], errProtocol)
		}
		out[i] = res
		rest = rest[len(item):]
	}
}

func indexOf(keys []string, k string) int {
	for i, x := range keys {
		if x == k {
			return i
		}
	}
	return -1
}

// errUDPTimeout is a UDP request whose reply never came (lost request or reply).
var errUDPTimeout = errors.New("e2e: no UDP reply")

// udpGetter sends framed requests from one socket in the client namespace and reuses its
// buffers. It reads the DSCP of replies over IPv4 and IPv6. Not safe for concurrent use.
type udpGetter struct {
	conn     *net.UDPConn
	id       uint16
	buf, oob []byte
	wait     time.Duration
}

func (r *rig) udpGetter(t testing.TB, wait time.Duration) *udpGetter {
	t.Helper()
	return newUDPGetter(t, r.pair.Client, r.addr, wait)
}

// newUDPGetter opens the getter's socket inside ns, connected to addr.
func newUDPGetter(t testing.TB, ns *netns.NS, addr netip.AddrPort, wait time.Duration) *udpGetter {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatalf("client socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		if addr.Addr().Is4() {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, 1)
		}
	}); err != nil || serr != nil {
		t.Fatalf("ask for the DSCP of replies: %v %v", err, serr)
	}
	return &udpGetter{conn: c, buf: make([]byte, 65536), oob: make([]byte, 128), wait: wait}
}

// dscpOf reads the traffic class of a received datagram, IPv4 or IPv6.
func dscpOf(oob []byte) (int, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) > 0:
			return int(m.Data[0] >> 2), true
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_TCLASS && len(m.Data) >= 4:
			return int(binary.NativeEndian.Uint32(m.Data) >> 2 & 63), true
		}
	}
	return 0, false
}

// do sends payload and returns the reassembled reply and whether the kernel's mark was on it.
// A reply that does not come within the wait is errUDPTimeout; late replies to earlier requests
// are skipped by their request ID.
func (g *udpGetter) do(payload string) (reply string, kernel bool, err error) {
	g.id++
	id := g.id
	msg := protocol.FrameHeader{RequestID: id, Total: 1}.AppendTo(nil)
	if _, err := g.conn.Write(append(msg, payload...)); err != nil {
		return "", false, fmt.Errorf("send %q: %w", firstLine(payload), err)
	}
	_ = g.conn.SetReadDeadline(time.Now().Add(g.wait))
	parts := map[uint16]string{}
	total := -1
	marked := true
	for total < 0 || len(parts) < total {
		n, oobn, _, _, err := g.conn.ReadMsgUDP(g.buf, g.oob)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return "", false, errUDPTimeout
			}
			return "", false, fmt.Errorf("read reply: %w", err)
		}
		h, err := protocol.ParseFrameHeader(g.buf[:n])
		if err != nil {
			return "", false, fmt.Errorf("parse frame header: %w", err)
		}
		if h.RequestID != id {
			continue
		}
		total = int(h.Total)
		parts[h.Seq] = string(g.buf[protocol.FrameHeaderLen:n])
		dscp, ok := dscpOf(g.oob[:oobn])
		marked = marked && ok && dscp == testDSCP
	}
	var b strings.Builder
	for i := 0; i < total; i++ {
		b.WriteString(parts[uint16(i)])
	}
	return b.String(), marked, nil
}

// restartServer replaces the rig's server with a fresh one (empty store) over kernel and empties
// the kernel cache, so nothing from the old store can be served. The new server listens on the
// same address: Shutdown has closed the old one's sockets by the time it returns.
func (r *rig) restartServer(t testing.TB, kernel server.KernelCache) {
	t.Helper()
	r.restartServerWith(t, server.Config{Kernel: kernel})
}

// restartServerWith is restartServer with more of the server's configuration.
func (r *rig) restartServerWith(t testing.TB, cfg server.Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shut down the rig's server: %v", err)
	}
	if err := r.kernel.Flush(time.Now()); err != nil {
		t.Fatalf("flush the kernel cache: %v", err)
	}
	var tcp net.Listener
	var udp *net.UDPConn
	if err := r.pair.Server.Do(func() (err error) {
		if tcp, err = net.Listen("tcp", r.addr.String()); err != nil {
			return err
		}
		udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(r.addr))
		return err
	}); err != nil {
		t.Fatalf("listen again: %v", err)
	}
	cfg.MemoryLimit, cfg.MaxItemSize, cfg.ConnLimit, cfg.Version = 64<<20, 1<<20, 64, "xdpcache-test"
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	r.srv = srv
	errc := make(chan error, 2)
	go func() { errc <- srv.ServeTCP(tcp) }()
	go func() { errc <- srv.ServeUDP(udp) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shut down the restarted server: %v", err)
		}
		for i := 0; i < 2; i++ {
			// ErrServerClosed: a goroutine that reached Serve only after Shutdown.
			if err := <-errc; err != nil && !errors.Is(err, server.ErrServerClosed) {
				t.Errorf("serve returned %v after Shutdown", err)
			}
		}
	})
}

// forgetfulKernel is a deliberately broken kernel cache: it drops every Invalidate, so the kernel
// keeps serving values that writes have replaced. The linearizability check must catch it.
type forgetfulKernel struct{ server.KernelCache }

func (forgetfulKernel) Invalidate(string) error { return nil }
