package main

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// startServe runs `serve` in-process with args plus a free port for TCP and UDP on 127.0.0.1,
// and returns that address once the server answers over TCP and answers UDP from 127.0.0.1 (which
// args must allow). It stops when the test ends.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	port := strconv.Itoa(testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cmd := newServeCmd()
	cmd.SetArgs(append([]string{"-l", "127.0.0.1", "-p", port, "-U", port, "--log-level", "warn"}, args...))
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	addr := net.JoinHostPort("127.0.0.1", port)
	for range 100 {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			if reply, err := udpAsk("127.0.0.1", addr, "version\r\n", 100*time.Millisecond); err == nil && strings.HasPrefix(reply, "VERSION ") {
				return addr
			}
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("serve %v: not answering on %s", args, addr)
	return ""
}

// errNoReply is udpAsk's timeout.
var errNoReply = errors.New("no reply")

// udpAsk sends one request datagram from src and returns the reply's payload, or errNoReply when
// nothing comes within wait.
func udpAsk(src, addr, payload string, wait time.Duration) (string, error) {
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return "", err
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, ra)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write(append(protocol.FrameHeader{RequestID: 7, Total: 1}.AppendTo(nil), payload...)); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "", errNoReply
	case err != nil:
		return "", err
	case n < protocol.FrameHeaderLen:
		return "", errors.New("reply shorter than a frame header")
	}
	return string(buf[protocol.FrameHeaderLen:n]), nil
}

// udpGet is udpAsk for a test: ok is false on errNoReply, any other error fails the test.
func udpGet(t *testing.T, src, addr, payload string, wait time.Duration) (string, bool) {
	t.Helper()
	reply, err := udpAsk(src, addr, payload, wait)
	if errors.Is(err, errNoReply) {
		return "", false
	}
	if err != nil {
		t.Fatalf("udp %q from %s: %v", payload, src, err)
	}
	return reply, true
}

// An explicit --allow-sources is exactly the list: the loopback the default allows is not added.
// 127.0.0.2 stands for a source outside it (every 127/8 address is local).
func TestServeAllowSourcesExact(t *testing.T) {
	addr := startServe(t, "--allow-sources", "127.0.0.1/32")
	if reply, ok := udpGet(t, "127.0.0.1", addr, "get k\r\n", 2*time.Second); !ok || reply != "END\r\n" {
		t.Fatalf("get from 127.0.0.1 (allowed): %q ok %v", reply, ok)
	}
	if reply, ok := udpGet(t, "127.0.0.2", addr, "get k\r\n", 300*time.Millisecond); ok {
		t.Fatalf("get from 127.0.0.2, outside --allow-sources 127.0.0.1/32, was answered: %q", reply)
	}

	// Without the flag, loopback is allowed: the same request from 127.0.0.2 is answered.
	def := startServe(t)
	if reply, ok := udpGet(t, "127.0.0.2", def, "get k\r\n", 2*time.Second); !ok || !strings.HasPrefix(reply, "END") {
		t.Fatalf("default allow-list: get from 127.0.0.2: %q ok %v", reply, ok)
	}
}
