package bpf

import (
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// A takeover moves the kernel path from one serve process to the next without a moment when the
// interface has no program: the old process passes its XDP and TC bpf_link descriptors
// (LinkFiles), and the new one replaces the program on each link in place (Adopt, the kernel's
// BPF_LINK_UPDATE). The links then live as long as any process holds a descriptor of them: once
// the old process has closed its own, they go with the new process, however it exits. If the
// takeover fails after the update, the old process puts its own programs back (Reclaim).
// The kernel cache's contents do not move with the links: the new cache is filled from the moved
// items before its program goes in (Fill, Keys).

// ErrNotAttached is returned by LinkFiles and Reclaim when the cache holds no links.
var ErrNotAttached = errors.New("bpf: cache not attached")

// LinkFiles returns duplicates of the XDP and the TC link's descriptors, for a successor
// process, with the interface and mode they are attached in. The caller closes the files.
func (c *Cache) LinkFiles() (xdp, tc *os.File, iface string, mode Mode, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, nil, "", "", ErrClosed
	}
	if c.link == nil || c.tcLink == nil {
		return nil, nil, "", "", ErrNotAttached
	}
	xdp, err = dupLinkFile(c.link, "xdp")
	if err != nil {
		return nil, nil, "", "", err
	}
	tc, err = dupLinkFile(c.tcLink, "tc")
	if err != nil {
		xdp.Close()
		return nil, nil, "", "", err
	}
	return xdp, tc, c.attachedTo, c.attachedMode, nil
}

func dupLinkFile(l link.Link, name string) (*os.File, error) {
	fl, ok := l.(interface{ FD() int })
	if !ok {
		return nil, fmt.Errorf("duplicate %s link: %T has no descriptor", name, l)
	}
	fd, err := unix.FcntlInt(uintptr(fl.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate %s link: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name+"-link"), nil
}

// linkFromFile takes over f's descriptor as a link; f is closed.
func linkFromFile(f *os.File, name string) (link.Link, error) {
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate %s link: %w", name, err)
	}
	l, err := link.NewFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("open %s link: %w", name, err)
	}
	return l, nil
}

// Adopt replaces the program on a running XDP link and TC link (descriptors from another
// process's LinkFiles, attached to iface in mode) with this cache's programs, and holds the
// links from then on as if Attach had made them: Close, or the process's death, detaches them
// once no other process holds them. TC goes first, as in Attach. Adopt takes the files.
func (c *Cache) Adopt(xdp, tc *os.File, iface string, mode Mode) error {
	xl, err := linkFromFile(xdp, "xdp")
	if err != nil {
		tc.Close()
		return err
	}
	tl, err := linkFromFile(tc, "tc")
	if err != nil {
		xl.Close()
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	fail := func(err error) error {
		xl.Close()
		tl.Close()
		return err
	}
	if c.closed {
		return fail(ErrClosed)
	}
	if c.link != nil {
		return fail(ErrAttached)
	}
	if c.opts.AllowSources == nil {
		subnets, err := interfaceSubnets(iface)
		if err != nil {
			return fail(err)
		}
		if err := c.allow(subnets); err != nil {
			return fail(err)
		}
	}
	if err := c.objs.TcReady.Set(uint32(1)); err != nil {
		return fail(fmt.Errorf("enable the TC program: %w", err))
	}
	if err := tl.Update(c.objs.TcCache); err != nil {
		return fail(fmt.Errorf("replace the TC program on %s: %w", iface, err))
	}
	if err := xl.Update(c.objs.XdpCache); err != nil {
		// The TC link now runs this cache's program, which nothing hands requests to until the
		// XDP program is ours too: harmless, and the caller's Reclaim in the old process puts
		// its own back.
		return fail(fmt.Errorf("replace the XDP program on %s: %w", iface, err))
	}
	c.link, c.tcLink = xl, tl
	c.attachedTo, c.attachedMode = iface, mode
	return nil
}

// Reclaim puts this cache's own programs back on its links, in case a successor's Adopt replaced
// them and then failed: the kernel must answer only from maps their owner keeps consistent.
func (c *Cache) Reclaim() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if c.link == nil || c.tcLink == nil {
		return ErrNotAttached
	}
	// XDP first: from then on no request reaches a successor's maps.
	if err := c.link.Update(c.objs.XdpCache); err != nil {
		return fmt.Errorf("put the XDP program back: %w", err)
	}
	if err := c.tcLink.Update(c.objs.TcCache); err != nil {
		return fmt.Errorf("put the TC program back: %w", err)
	}
	return nil
}

// Keys returns the keys in the kernel cache, most recently filled first.
func (c *Cache) Keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	type kf struct {
		key    string
		filled uint64
	}
	all := make([]kf, 0, len(c.entries))
	for k, e := range c.entries {
		all = append(all, kf{k, e.filled})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].filled > all[j].filled })
	out := make([]string, len(all))
	for i, e := range all {
		out[i] = e.key
	}
	return out
}
