package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/server"
)

const (
	testPort  = 11211
	testDSCP  = 46
	replyWait = 2 * time.Second
)

// rig is a server namespace running the Go server with the XDP program attached in native mode,
// and a client namespace to talk to it from.
type rig struct {
	pair   *netns.Pair
	kernel *bpf.Cache
	srv    *server.Server
	addr   netip.AddrPort
}

func newRig(t *testing.T, admission string) *rig {
	t.Helper()
	return newRigWith(t, admission, nil)
}

// newRigWith is newRig with the kernel's options and the server's configuration changed by
// adjust, when not nil, before either starts.
func newRigWith(t *testing.T, admission string, adjust func(*bpf.Options, *server.Config)) *rig {
	t.Helper()
	testenv.RequireRoot(t)
	pair := newPassPair(t, "xce2e")
	return startRig(t, pair, admission, pair.ServerIf, bpf.ModeNative, netip.AddrPortFrom(netns.ServerIPv4, testPort), adjust)
}

// newLoopbackRig is a rig whose server and client share one namespace and talk over its lo, with
// the program attached to lo in generic mode.
func newLoopbackRig(t *testing.T, admission string) *rig {
	t.Helper()
	testenv.RequireRoot(t)
	pair := newPassPair(t, "xclo")
	one := &netns.Pair{Server: pair.Server, Client: pair.Server, ServerIf: "lo", ClientIf: "lo", MTU: pair.MTU}
	return startRig(t, one, admission, "lo", bpf.ModeGeneric, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), testPort), nil)
}

// startRig loads and attaches the program to iface in mode inside pair's server namespace and
// starts the Go server on addr there; adjust, when not nil, changes the kernel's options and the
// server's configuration first.
func startRig(t *testing.T, pair *netns.Pair, admission, iface string, mode bpf.Mode, addr netip.AddrPort,
	adjust func(*bpf.Options, *server.Config)) *rig {
	t.Helper()
	r := &rig{pair: pair, addr: addr}

	opts := bpf.Options{Port: testPort, MaxBytes: 4 << 20, MaxEntries: 4096,
		ReplyDSCP: testDSCP, Admission: admission, MTU: pair.MTU}
	cfg := server.Config{MemoryLimit: 64 << 20, MaxItemSize: 1 << 20, ConnLimit: 64, Version: "xdpcache-test"}
	if adjust != nil {
		adjust(&opts, &cfg)
	}
	var tcp net.Listener
	var udp *net.UDPConn
	if err := pair.Server.Do(func() error {
		kc, err := bpf.New(opts)
		if err != nil {
			return fmt.Errorf("load program: %w", err)
		}
		r.kernel = kc
		if got, err := kc.Attach(iface, mode); err != nil || got != mode {
			return fmt.Errorf("attach %s to %s: mode %q, %w", mode, iface, got, err)
		}
		if tcp, err = net.Listen("tcp", r.addr.String()); err != nil {
			return err
		}
		udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(r.addr))
		return err
	}); err != nil {
		t.Fatalf("server namespace: %+v", err)
	}
	t.Cleanup(func() { r.kernel.Close() })

	var err error
	cfg.Kernel = r.kernel
	r.srv, err = server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	go r.srv.ServeTCP(tcp)
	go r.srv.ServeUDP(udp)
	r.waitServing(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.srv.Shutdown(ctx)
	})
	return r
}

// waitServing returns once the server answers `version` over TCP and over UDP from the client
// namespace: both Serve goroutines are running, so a Shutdown from here on closes their sockets.
func (r *rig) waitServing(t *testing.T) {
	t.Helper()
	if _, err := r.memcacheClient().Get("readiness-probe"); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("server not answering over TCP: %v", err)
	}
	u := r.udpGetter(t, 2*time.Second)
	if reply, _, err := u.do("version\r\n"); err != nil || !strings.HasPrefix(reply, "VERSION ") {
		t.Fatalf("server not answering over UDP: %q, %v", reply, err)
	}
}

// newPassPair is the veth pair between a server and a client namespace, with XDP_PASS on the
// client's end: XDP_TX on a veth in native mode needs a program on the peer too.
func newPassPair(t *testing.T, prefix string) *netns.Pair {
	t.Helper()
	testenv.RequireRoot(t)
	pair, err := netns.NewPair(prefix)
	if err != nil {
		t.Fatalf("create namespaces: %v", err)
	}
	t.Cleanup(func() { pair.Close() })
	if err := pair.Client.Do(func() error {
		l, err := bpf.AttachPass(pair.ClientIf, bpf.ModeNative)
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	}); err != nil {
		t.Fatalf("attach XDP_PASS to the client veth: %+v", err)
	}
	return pair
}

// memcacheClient is a gomemcache client whose connections are opened in the client namespace.
func (r *rig) memcacheClient() *memcache.Client {
	return memcacheClientIn(r.pair.Client, r.addr.String())
}

// memcacheClientIn is a gomemcache client of servers whose connections are opened inside ns.
func memcacheClientIn(ns *netns.NS, servers ...string) *memcache.Client {
	c := memcache.New(servers...)
	c.Timeout = 2 * time.Second
	c.DialContext = func(ctx context.Context, network, address string) (conn net.Conn, err error) {
		err = ns.Do(func() error {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
	return c
}

func (r *rig) stat(t *testing.T, name string) uint64 {
	t.Helper()
	v, ok := r.srv.Stats()[name]
	if !ok {
		t.Fatalf("server stats lack %q", name)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("stat %s = %q: %v", name, v, err)
	}
	return n
}

func (r *rig) kernelHits(t *testing.T) uint64 {
	t.Helper()
	s, err := r.kernel.Stats()
	if err != nil {
		t.Fatalf("kernel stats: %v", err)
	}
	return s.Hits
}
