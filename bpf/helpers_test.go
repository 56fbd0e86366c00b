package bpf

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/kernelcache"
)

const (
	xdpPass = 2
	xdpTX   = 3
)

var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	serverMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	client4   = netip.MustParseAddr("10.0.0.1")
	server4   = netip.MustParseAddr("10.0.0.2")
	client6   = netip.MustParseAddr("fd00::1")
	server6   = netip.MustParseAddr("fd00::2")
	// testClients is the allow-list tests use: the client addresses above, not the servers.
	testClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32"), netip.MustParsePrefix("fd00::1/128")}
)

// newTestCache loads a cache with small maps and admission "always" unless opts say otherwise.
func newTestCache(t testing.TB, opts Options) *Cache {
	t.Helper()
	testenv.RequireRoot(t)
	if opts.MaxEntries == 0 {
		opts.MaxEntries = 256
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 1 << 20
	}
	if opts.Admission == "" {
		opts.Admission = AdmitAlways
	}
	if opts.AllowSources == nil {
		opts.AllowSources = testClients
	}
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// request is a default IPv4 client-to-server request carrying command.
func request(command string) packet.UDP {
	return packet.UDP{
		SrcMAC: clientMAC, DstMAC: serverMAC,
		Src: client4, Dst: server4,
		SrcPort: 40000, DstPort: 11211,
		Payload: packet.Memcached(0x1234, command),
	}
}

func request6(command string) packet.UDP {
	u := request(command)
	u.Src, u.Dst = client6, server6
	return u
}

// run feeds one frame to prog and returns the verdict and the frame afterwards.
func run(t testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+4096)}
	ret, err := prog.Run(&opts)
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	return ret, opts.DataOut
}

// reply is the server's reply payload for keys of store: frame header, VALUE lines, END.
func reply(rid uint16, store map[string]kernelcache.Item, withCAS bool, keys ...string) []byte {
	b := protocol.FrameHeader{RequestID: rid, Total: 1}.AppendTo(nil)
	for _, k := range keys {
		it := store[k]
		b = protocol.AppendValue(b, it.Key, it.Flags, it.Value, it.CAS, withCAS)
	}
	return append(b, protocol.End...)
}

// checkReply asserts frame is a correct reply to req: addresses, ports and MACs swapped, both
// checksums valid (packet.Parse checks them), and the payload want.
func checkReply(t testing.TB, req packet.UDP, frame []byte, want []byte) packet.Parsed {
	t.Helper()
	p, err := packet.Parse(frame)
	if err != nil {
		t.Fatalf("parse reply: %v\n%x", err, frame)
	}
	if p.Src != req.Dst || p.Dst != req.Src || p.SrcPort != req.DstPort || p.DstPort != req.SrcPort {
		t.Errorf("reply %v:%d -> %v:%d, request %v:%d -> %v:%d", p.Src, p.SrcPort, p.Dst, p.DstPort,
			req.Src, req.SrcPort, req.Dst, req.DstPort)
	}
	if !bytes.Equal(p.SrcMAC, req.DstMAC) || !bytes.Equal(p.DstMAC, req.SrcMAC) {
		t.Errorf("reply MACs %v -> %v", p.SrcMAC, p.DstMAC)
	}
	if p.Tagged != req.Tagged || p.VLAN != req.VLAN {
		t.Errorf("reply VLAN %v/%d, request %v/%d", p.Tagged, p.VLAN, req.Tagged, req.VLAN)
	}
	if want != nil && !bytes.Equal(p.Payload, want) {
		t.Errorf("reply payload\n got %q\nwant %q", p.Payload, want)
	}
	// Invariant 7: every kernel reply stays within the amplification cap the tests run with
	// (the default; TestAmplificationCap checks a lower one itself).
	if len(p.Payload) > DefaultMaxAmplification*len(req.Payload) {
		t.Errorf("reply of %d bytes to a request of %d: over %dx", len(p.Payload), len(req.Payload), DefaultMaxAmplification)
	}
	return p
}

// counterDelta reads the counters before and after f.
func counterDelta(t testing.TB, c *Cache, f func()) [xdpcacheCounterCNT_MAX]uint64 {
	t.Helper()
	before, err := c.counters()
	if err != nil {
		t.Fatal(err)
	}
	f()
	after, err := c.counters()
	if err != nil {
		t.Fatal(err)
	}
	for i := range after {
		after[i] -= before[i]
	}
	return after
}

func offer(t testing.TB, c *Cache, it kernelcache.Item) {
	t.Helper()
	if err := c.Offer(it); err != nil {
		t.Fatalf("Offer(%q): %v", it.Key, err)
	}
	if n, _ := c.Len(); n == 0 {
		t.Fatalf("Offer(%q) installed nothing", it.Key)
	}
}

func item(key, value string, flags uint32, cas uint64) kernelcache.Item {
	return kernelcache.Item{Key: key, Value: []byte(value), Flags: flags, CAS: cas}
}

func keysCommand(verb string, keys ...string) string {
	return verb + " " + strings.Join(keys, " ") + "\r\n"
}

func netipFrom4(b []byte) netip.Addr  { return netip.AddrFrom4([4]byte(b)) }
func netipFrom16(b []byte) netip.Addr { return netip.AddrFrom16([16]byte(b)) }

func testStoreOne() map[string]kernelcache.Item {
	return map[string]kernelcache.Item{"k": item("k", "value", 0, 1)}
}
