// Package netns builds the test topology the end-to-end tests, experiments and the demo run on: two
// network namespaces, a server and a client, joined by a veth pair, with addresses from the
// benchmarking range 198.18.0.0/15 (RFC 2544) and 2001:2::/48 (RFC 5180) that exist only inside them.
//
// A goroutine's network namespace is its OS thread's. Do runs a function on a fresh OS thread that
// has entered the namespace and is thrown away afterwards (the goroutine exits while still locked),
// so no thread of the process is ever left in the wrong namespace. Sockets opened inside Do stay in
// that namespace and may be used from any goroutine afterwards.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Addresses inside the pair. They are routed nowhere outside the two namespaces.
var (
	ServerIPv4 = netip.MustParseAddr("198.18.0.1")
	ClientIPv4 = netip.MustParseAddr("198.18.0.2")
	ServerIPv6 = netip.MustParseAddr("2001:2::1")
	ClientIPv6 = netip.MustParseAddr("2001:2::2")
)

// NS is a named network namespace.
type NS struct {
	Name   string
	handle netns.NsHandle
}

// Do runs fn inside the namespace on a dedicated OS thread and returns its error.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with this goroutine instead of returning to the pool
		// in a namespace other than the process's.
		runtime.LockOSThread()
		if err := netns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Path is where the namespace is bound, for `ip netns exec NAME` and nsenter.
func (n *NS) Path() string { return "/var/run/netns/" + n.Name }

// Pair is a server and a client namespace joined by a veth pair.
type Pair struct {
	Server, Client     *NS
	ServerIf, ClientIf string // interface names, each inside its namespace
	MTU                int
}

// NewPair creates the namespaces, the veth pair, addresses (IPv4 /30 and IPv6 /64, DAD off) and
// brings everything up, loopback included. prefix (a few letters) names the namespaces, so that a
// leftover one says who made it; a random suffix keeps concurrent pairs apart. Close removes all of it.
func NewPair(prefix string) (p *Pair, err error) {
	suffix, err := randomSuffix()
	if err != nil {
		return nil, err
	}
	p = &Pair{ServerIf: "xc-srv", ClientIf: "xc-cli", MTU: 1500}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.Server, err = newNamed(prefix + "-" + suffix + "-srv"); err != nil {
		return p, err
	}
	if p.Client, err = newNamed(prefix + "-" + suffix + "-cli"); err != nil {
		return p, err
	}
	// Create the pair in the server namespace with the peer placed straight into the client's, so
	// the fixed interface names never meet in the root namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.ServerIf, MTU: p.MTU},
		PeerName:      p.ClientIf,
		PeerNamespace: netlink.NsFd(p.Client.handle),
	}
	srv, err := netlink.NewHandleAt(p.Server.handle)
	if err != nil {
		return p, fmt.Errorf("netlink in %s: %w", p.Server.Name, err)
	}
	defer srv.Close()
	if err := srv.LinkAdd(veth); err != nil {
		return p, fmt.Errorf("create veth pair: %w", err)
	}
	if err := configure(p.Server, p.ServerIf, ServerIPv4, ServerIPv6); err != nil {
		return p, err
	}
	if err := configure(p.Client, p.ClientIf, ClientIPv4, ClientIPv6); err != nil {
		return p, err
	}
	return p, nil
}

// Close deletes both namespaces; the veth pair goes with them.
func (p *Pair) Close() error {
	var errs []error
	for _, n := range []*NS{p.Server, p.Client} {
		if n != nil {
			errs = append(errs, n.Close())
		}
	}
	return errors.Join(errs...)
}

// Ifindex returns the index of the named interface inside namespace n.
func (n *NS) Ifindex(name string) (int, error) {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return 0, fmt.Errorf("netlink in %s: %w", n.Name, err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find %s in %s: %w", name, n.Name, err)
	}
	return l.Attrs().Index, nil
}

func newNamed(name string) (*NS, error) {
	var h netns.NsHandle
	// NewNamed moves the calling thread into the new namespace: do it on a throwaway thread.
	err := (&NS{Name: "(root)", handle: mustCurrent()}).Do(func() error {
		var err error
		h, err = netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &NS{Name: name, handle: h}, nil
}

func mustCurrent() netns.NsHandle {
	h, err := netns.Get()
	if err != nil {
		return netns.None()
	}
	return h
}

func configure(n *NS, ifname string, v4, v6 netip.Addr) error {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", n.Name, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", n.Name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in %s: %w", n.Name, err)
	}
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", ifname, n.Name, err)
	}
	// Duplicate address detection would hold the IPv6 address tentative for a second or more.
	if err := n.Do(func() error { return disableDAD(ifname) }); err != nil {
		return err
	}
	for _, a := range []struct {
		ip   netip.Addr
		bits int
	}{{v4, 30}, {v6, 64}} {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.ip.AsSlice(), Mask: net.CIDRMask(a.bits, a.ip.BitLen())}}
		if a.ip.Is6() {
			addr.Flags = 0x80 // IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", a.ip, ifname, n.Name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s in %s: %w", ifname, n.Name, err)
	}
	return nil
}

func randomSuffix() (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random netns suffix: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// NewIsolated creates one namespace holding only its own loopback, up. Tests that attach XDP to
// lo use it so that they never meet each other, or a real deployment, on the host's lo.
func NewIsolated(prefix string) (*NS, error) {
	suffix, err := randomSuffix()
	if err != nil {
		return nil, err
	}
	n, err := newNamed(prefix + "-" + suffix)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("netlink in %s: %w", n.Name, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("bring up lo in %s: %w", n.Name, err)
	}
	return n, nil
}

// Close deletes a namespace made by NewIsolated.
func (n *NS) Close() error {
	n.handle.Close()
	if err := netns.DeleteNamed(n.Name); err != nil {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	return nil
}
