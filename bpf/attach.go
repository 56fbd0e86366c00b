package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Mode is how the program attaches to an interface.
type Mode string

// Attach modes.
const (
	ModeAuto    Mode = "auto"    // native if the driver supports it, else generic
	ModeNative  Mode = "native"  // in the driver's receive path
	ModeGeneric Mode = "generic" // after the skb is built; works on any interface
)

// Attach errors, wrapped with the interface and the kernel's error.
var (
	ErrNoInterface = errors.New("bpf: no such interface")
	ErrBusy        = errors.New("bpf: another XDP program is attached")
	ErrPermission  = errors.New("bpf: not permitted (needs root or CAP_NET_ADMIN and CAP_BPF)")
	ErrAttached    = errors.New("bpf: cache already attached")
)

// Attach attaches the program to iface through a bpf_link, which the kernel detaches when its
// last file descriptor closes: on Close, or when the process dies, kill -9 included. ModeAuto
// tries native first, then generic. It returns the mode in effect.
func (c *Cache) Attach(iface string, mode Mode) (Mode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return "", ErrClosed
	}
	if c.link != nil {
		return "", ErrAttached
	}
	// With no allow-list configured, the clients the kernel answers are loopback and the
	// interface's own subnets: allow them before the first packet can arrive.
	if c.opts.AllowSources == nil {
		subnets, err := interfaceSubnets(iface)
		if err != nil {
			return "", err
		}
		if err := c.allow(subnets); err != nil {
			return "", err
		}
	}
	// TC first, so that no request XDP hands over finds no one to answer it.
	tc, err := attachTC(c.objs.TcCache, iface)
	if err != nil {
		return "", err
	}
	l, m, err := attachXDP(c.objs.XdpCache, iface, mode)
	if err != nil {
		tc.Close()
		return "", err
	}
	if err := c.objs.TcReady.Set(uint32(1)); err != nil {
		l.Close()
		tc.Close()
		return "", fmt.Errorf("enable the TC program: %w", err)
	}
	c.link, c.tcLink = l, tc
	c.attachedTo, c.attachedMode = iface, m
	return m, nil
}

// attachTC attaches the TC program to iface's ingress through a TCX bpf_link, which, like the
// XDP link, the kernel detaches when the process dies. It answers what XDP hands it: requests
// whose reply the XDP frame has no room to grow to.
func attachTC(prog *ebpf.Program, iface string) (link.Link, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("attach tc to %q: %w: %w", iface, ErrNoInterface, err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Program: prog, Attach: ebpf.AttachTCXIngress, Interface: ifc.Index})
	if err != nil {
		return nil, fmt.Errorf("attach tc ingress to %q: %w", iface, classifyAttachError(err))
	}
	return l, nil
}

// Attached returns the interface and mode the program is attached to, or empty strings.
func (c *Cache) Attached() (iface string, mode Mode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.link == nil || c.closed {
		return "", ""
	}
	return c.attachedTo, c.attachedMode
}

// interfaceSubnets lists the prefixes of iface's addresses, as seen from the calling thread's
// network namespace.
func interfaceSubnets(iface string) ([]netip.Prefix, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("attach xdp to %q: %w: %w", iface, ErrNoInterface, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, fmt.Errorf("addresses of %q: %w", iface, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		bits, _ := n.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), bits).Masked())
	}
	return out, nil
}

// AttachProgram attaches any XDP program (LoadPass, LoadEcho) the same way as Cache.Attach.
// The caller closes the returned link to detach.
func AttachProgram(prog *ebpf.Program, iface string, mode Mode) (link.Link, Mode, error) {
	return attachXDP(prog, iface, mode)
}

func attachXDP(prog *ebpf.Program, iface string, mode Mode) (link.Link, Mode, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, "", fmt.Errorf("attach xdp to %q: %w: %w", iface, ErrNoInterface, err)
	}
	try := []Mode{mode}
	switch mode {
	case ModeAuto, "":
		try = []Mode{ModeNative, ModeGeneric}
	case ModeNative, ModeGeneric:
	default:
		return nil, "", fmt.Errorf("attach xdp to %q: %w: mode %q", iface, ErrOptions, mode)
	}
	var firstErr error
	for _, m := range try {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: flags})
		if err == nil {
			return l, m, nil
		}
		err = classifyAttachError(err)
		if errors.Is(err, ErrBusy) || errors.Is(err, ErrPermission) {
			return nil, "", fmt.Errorf("attach xdp to %q (%s): %w", iface, m, err)
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("attach xdp to %q (%s): %w", iface, m, err)
		} else {
			firstErr = fmt.Errorf("%w; %s: %w", firstErr, m, err)
		}
	}
	return nil, "", firstErr
}

func classifyAttachError(err error) error {
	switch {
	case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%w: %w", ErrPermission, err)
	}
	return err
}
