package netns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// TestPairCarriesUDP proves the pair is wired: a datagram from the client namespace reaches a socket
// in the server namespace over IPv4 and IPv6, and the root namespace cannot see the addresses.
func TestPairCarriesUDP(t *testing.T) {
	testenv.RequireRoot(t)
	p, err := NewPair("xct")
	if err != nil {
		t.Fatalf("NewPair: %v", err)
	}
	defer func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()

	for _, srvIP := range []netip.Addr{ServerIPv4, ServerIPv6} {
		var srv, cli *net.UDPConn
		if err := p.Server.Do(func() (err error) {
			srv, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(srvIP, 0)))
			return err
		}); err != nil {
			t.Fatalf("listen in server ns: %v", err)
		}
		defer srv.Close()
		if err := p.Client.Do(func() (err error) {
			cli, err = net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
			return err
		}); err != nil {
			t.Fatalf("dial from client ns: %v", err)
		}
		defer cli.Close()

		if _, err := cli.Write([]byte("ping")); err != nil {
			t.Fatalf("send: %v", err)
		}
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		n, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: receive: %v", srvIP, err)
		}
		if string(buf[:n]) != "ping" {
			t.Fatalf("%s: got %q, want ping", srvIP, buf[:n])
		}
		want := ClientIPv4
		if srvIP.Is6() {
			want = ClientIPv6
		}
		if from.Addr() != want {
			t.Fatalf("source %s, want %s", from.Addr(), want)
		}
	}

	if _, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ServerIPv4, 0))); err == nil {
		t.Fatal("the server address is bindable in the root namespace; the pair leaked out")
	}
	if idx, err := p.Server.Ifindex(p.ServerIf); err != nil || idx <= 0 {
		t.Fatalf("Ifindex(%s) = %d, %v", p.ServerIf, idx, err)
	}
}

// TestIsolatedLoopback: a namespace of its own has a working lo that the root namespace does not
// share, so XDP attached there cannot collide with another test's.
func TestIsolatedLoopback(t *testing.T) {
	testenv.RequireRoot(t)
	n, err := NewIsolated("xct")
	if err != nil {
		t.Fatalf("NewIsolated: %v", err)
	}
	var srv *net.UDPConn
	if err := n.Do(func() (err error) {
		srv, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	}); err != nil {
		t.Fatalf("loopback inside the namespace: %v", err)
	}
	defer srv.Close()
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := srv.ReadFromUDP(make([]byte, 4)); err != nil {
		t.Fatalf("receive on the namespace's lo: %v", err)
	}
	// The same port on the root namespace's lo is free: the two loopbacks are distinct.
	root, err := net.ListenUDP("udp", srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatalf("the namespace's port is taken in the root namespace too: %v", err)
	}
	root.Close()
	if idx, err := n.Ifindex("lo"); err != nil || idx != 1 {
		t.Fatalf("Ifindex(lo) = %d, %v; want 1", idx, err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
