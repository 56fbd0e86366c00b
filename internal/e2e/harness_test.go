package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/protocol"
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
	testenv.RequireRoot(t)
	pair, err := netns.NewPair("xce2e")
	if err != nil {
		t.Fatalf("create namespaces: %v", err)
	}
	t.Cleanup(func() { pair.Close() })
	r := &rig{pair: pair, addr: netip.AddrPortFrom(netns.ServerIPv4, testPort)}

	// XDP_TX on a veth in native mode needs a program on the peer too.
	if err := pair.Client.Do(func() error {
		pass, err := bpf.LoadPass()
		if err != nil {
			return err
		}
		defer pass.Close()
		idx, err := pair.Client.Ifindex(pair.ClientIf)
		if err != nil {
			return err
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: idx, Flags: link.XDPDriverMode})
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	}); err != nil {
		t.Fatalf("attach XDP_PASS to the client veth: %+v", err)
	}

	var tcp net.Listener
	var udp *net.UDPConn
	if err := pair.Server.Do(func() error {
		kc, err := bpf.New(bpf.Options{Port: testPort, MaxBytes: 4 << 20, MaxEntries: 4096,
			ReplyDSCP: testDSCP, Admission: admission, MTU: pair.MTU})
		if err != nil {
			return fmt.Errorf("load program: %w", err)
		}
		r.kernel = kc
		if mode, err := kc.Attach(pair.ServerIf, bpf.Mode("native")); err != nil || mode != bpf.Mode("native") {
			return fmt.Errorf("attach native: mode %q, %w", mode, err)
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

	r.srv, err = server.New(server.Config{MemoryLimit: 64 << 20, MaxItemSize: 1 << 20, ConnLimit: 64,
		Kernel: r.kernel, Version: "xdpcache-test"})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	go r.srv.ServeTCP(tcp)
	go r.srv.ServeUDP(udp)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.srv.Shutdown(ctx)
	})
	return r
}

// memcacheClient is a gomemcache client whose connections are opened in the client namespace.
func (r *rig) memcacheClient() *memcache.Client {
	c := memcache.New(r.addr.String())
	c.Timeout = 2 * time.Second
	c.DialContext = func(ctx context.Context, network, address string) (conn net.Conn, err error) {
		err = r.pair.Client.Do(func() error {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
	return c
}

// udpClient is a UDP socket in the client namespace that reports the DSCP of what it receives.
type udpClient struct {
	conn *net.UDPConn
	id   uint16
}

func (r *rig) udpClient(t *testing.T) *udpClient {
	t.Helper()
	var c *net.UDPConn
	if err := r.pair.Client.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.addr))
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
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })
	if serr != nil {
		t.Fatalf("IP_RECVTOS: %v", serr)
	}
	return &udpClient{conn: c}
}

// request sends one framed request and returns the reassembled reply and the DSCP it came with.
func (u *udpClient) request(payload string) (reply string, dscp int, err error) {
	u.id++
	msg := protocol.FrameHeader{RequestID: u.id, Total: 1}.AppendTo(nil)
	if _, err := u.conn.Write(append(msg, payload...)); err != nil {
		return "", 0, err
	}
	buf, oob := make([]byte, 65536), make([]byte, 128)
	parts := map[uint16]string{}
	total := -1
	u.conn.SetReadDeadline(time.Now().Add(replyWait))
	for total < 0 || len(parts) < total {
		n, oobn, _, _, err := u.conn.ReadMsgUDP(buf, oob)
		if err != nil {
			return "", 0, fmt.Errorf("read reply to %q: %w", payload, err)
		}
		h, err := protocol.ParseFrameHeader(buf[:n])
		if err != nil {
			return "", 0, err
		}
		if h.RequestID != u.id {
			continue // a late reply to an earlier request
		}
		total = int(h.Total)
		parts[h.Seq] = string(buf[protocol.FrameHeaderLen:n])
		if tos, ok := tosOf(oob[:oobn]); ok {
			dscp = int(tos >> 2)
		}
	}
	for i := 0; i < total; i++ {
		reply += parts[uint16(i)]
	}
	return reply, dscp, nil
}

func tosOf(oob []byte) (byte, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) > 0 {
			return m.Data[0], true
		}
	}
	return 0, false
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

var errNoKernelReply = errors.New("the kernel never answered")
