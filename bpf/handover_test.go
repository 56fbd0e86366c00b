package bpf

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// xdpProgID is the id of the XDP program on iface, 0 for none, read from the calling thread's
// namespace.
func xdpProgID(iface string) (uint32, error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return 0, err
	}
	if x := l.Attrs().Xdp; x != nil {
		return x.ProgId, nil
	}
	return 0, nil
}

func progID(t *testing.T, c *Cache) (xdp, tc uint32) {
	t.Helper()
	xi, err := c.objs.XdpCache.Info()
	if err != nil {
		t.Fatal(err)
	}
	ti, err := c.objs.TcCache.Info()
	if err != nil {
		t.Fatal(err)
	}
	x, _ := xi.ID()
	tt, _ := ti.ID()
	return uint32(x), uint32(tt)
}

func linkProg(l link.Link) (uint32, error) {
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	return uint32(info.Program), nil
}

// TestAdoptAndReclaim: a second cache takes the first one's links and puts its own programs on
// them, the interface never without a program; the first can put its own back; once the first
// is closed, the links are the second's, and closing it detaches them.
func TestAdoptAndReclaim(t *testing.T) {
	testenv.RequireRoot(t)
	ns, err := netns.NewIsolated("xcadopt")
	if err != nil {
		t.Fatalf("private namespace: %v", err)
	}
	defer ns.Close()
	old := newTestCache(t, Options{})
	next := newTestCache(t, Options{})
	oldXDP, oldTC := progID(t, old)
	nextXDP, nextTC := progID(t, next)
	err = ns.Do(func() error {
		if _, _, _, _, err := old.LinkFiles(); !errors.Is(err, ErrNotAttached) {
			return fmt.Errorf("LinkFiles before Attach: %v, want ErrNotAttached", err)
		}
		if _, err := old.Attach("lo", ModeGeneric); err != nil {
			return err
		}
		xf, tf, iface, mode, err := old.LinkFiles()
		if err != nil {
			return err
		}
		if iface != "lo" || mode != ModeGeneric {
			return fmt.Errorf("LinkFiles: %s %s", iface, mode)
		}
		if err := next.Adopt(xf, tf, iface, mode); err != nil {
			return fmt.Errorf("Adopt: %w", err)
		}
		if id, err := xdpProgID("lo"); err != nil || id != nextXDP {
			return fmt.Errorf("XDP program on lo after Adopt: %d %v, want the new one %d", id, err, nextXDP)
		}
		if id, err := linkProg(next.tcLink); err != nil || id != nextTC {
			return fmt.Errorf("TC link program after Adopt: %d %v, want %d", id, err, nextTC)
		}
		if iface, mode := next.Attached(); iface != "lo" || mode != ModeGeneric {
			return fmt.Errorf("adopting cache attached to %q in %q", iface, mode)
		}
		// A takeover that failed after the update: the old cache puts its programs back.
		if err := old.Reclaim(); err != nil {
			return fmt.Errorf("Reclaim: %w", err)
		}
		if id, _ := xdpProgID("lo"); id != oldXDP {
			return fmt.Errorf("XDP program after Reclaim: %d, want %d", id, oldXDP)
		}
		if id, _ := linkProg(old.tcLink); id != oldTC {
			return fmt.Errorf("TC program after Reclaim: %d, want %d", id, oldTC)
		}
		// And the takeover again, this time to the end: the old cache closes, the link stays.
		if err := next.Reclaim(); err != nil {
			return fmt.Errorf("Reclaim by the adopting cache: %w", err)
		}
		if err := old.Close(); err != nil {
			return err
		}
		if id, _ := xdpProgID("lo"); id != nextXDP {
			return fmt.Errorf("XDP program once the old cache closed: %d, want %d", id, nextXDP)
		}
		if err := next.Close(); err != nil {
			return err
		}
		if id, _ := xdpProgID("lo"); id != 0 {
			return fmt.Errorf("XDP program %d still attached once both caches closed", id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFillBypassesAdmission: with frequency admission one offer of a new key is refused, while
// Fill installs it; Keys lists what is cached.
func TestFillBypassesAdmission(t *testing.T) {
	c := newTestCache(t, Options{Admission: AdmitFrequency})
	if err := c.Offer(item("a", "1", 0, 1)); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Len(); n != 0 {
		t.Fatalf("one offer admitted under frequency admission: %d entries", n)
	}
	for _, k := range []string{"a", "b"} {
		if err := c.Fill(item(k, "1", 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	keys := c.Keys()
	if len(keys) != 2 || !(keys[0] == "a" && keys[1] == "b" || keys[0] == "b" && keys[1] == "a") {
		t.Fatalf("Keys %q, want a and b", keys)
	}
	if v, _ := run(t, c.Program(), request(keysCommand("get", "a", "b")).Bytes()); v != xdpTX {
		t.Fatalf("filled keys not answered: verdict %d", v)
	}
}
