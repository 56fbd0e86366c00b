package client

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/server"
)

// StartServe is startServe for the package's external tests.
var StartServe = startServe

// startServe runs the Go server on 127.0.0.1:port (TCP and UDP) with kernel as its kernel
// cache (nil: none). Listening happens in ns when set.
func startServe(t *testing.T, ns *netns.NS, port int, kernel server.KernelCache) string {
	t.Helper()
	return startServeOn(t, ns, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), kernel)
}

// startServeOn runs the Go server on addr, TCP and UDP.
func startServeOn(t *testing.T, ns *netns.NS, addr string, kernel server.KernelCache) string {
	t.Helper()
	var tcp net.Listener
	var udp *net.UDPConn
	listen := func() (err error) {
		if tcp, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		udp, err = net.ListenUDP("udp", ua)
		return err
	}
	var err error
	if ns != nil {
		err = ns.Do(listen)
	} else {
		err = listen()
	}
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	srv, err := server.New(server.Config{MemoryLimit: 64 << 20, MaxItemSize: 1 << 20, ConnLimit: 256,
		Kernel: kernel, Version: "xdpcache-test"})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	go func() { _ = srv.ServeTCP(tcp) }()
	go func() { _ = srv.ServeUDP(udp) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return addr
}
