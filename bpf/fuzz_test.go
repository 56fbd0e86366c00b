package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/server"
)

// FuzzProgram feeds mutated frames to the XDP program in front of a Go server holding the same
// items (the server filled the kernel cache itself, as on the wire). For every input: never a
// drop; a pass leaves the frame as it came; a reply is a well-formed frame (lengths agree, both
// checksums valid) back to the sender, within the amplification cap, and byte-identical to the
// server's reply to the same datagram. Seeds are in testdata/fuzz/FuzzProgram.
func FuzzProgram(f *testing.F) {
	testenv.RequireRoot(f)
	// Every source is allowed and there is no rate limit, so the fuzzer can reach replies.
	c := newTestCache(f, Options{AllowSources: []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"),
	}})
	srv, err := server.New(server.Config{Kernel: c})
	if err != nil {
		f.Fatal(err)
	}
	store := testStore()
	for _, it := range store {
		set := fmt.Sprintf("set %s %d 0 %d\r\n%s\r\n", it.Key, it.Flags, len(it.Value), it.Value)
		if r := srv.HandleDatagram(packet.Memcached(1, set)); len(r) != 1 || !bytes.HasSuffix(r[0], []byte("STORED\r\n")) {
			f.Fatalf("set %q: %q", it.Key, r)
		}
		srv.HandleDatagram(packet.Memcached(2, keysCommand("get", it.Key))) // the server offers it
	}
	if n, _ := c.Len(); n != len(store) {
		f.Fatalf("the server put %d of %d items in the kernel cache", n, len(store))
	}
	// The comparison below is only worth something if hits are answered: check one.
	hit := request(keysCommand("gets", "alpha", "big"))
	if v, out := run(f, c.Program(), hit.Bytes()); v != xdpTX {
		f.Fatalf("a hit was not answered (verdict %d): the fuzz target would compare nothing", v)
	} else if want := srv.HandleDatagram(hit.Payload); len(want) != 1 {
		f.Fatalf("server reply %q", want)
	} else {
		checkReply(f, hit, out, want[0])
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		// BPF_PROG_RUN needs an Ethernet header; one page holds the frame and its reply.
		if len(frame) < 14 || len(frame) > 1600 {
			return
		}
		in := bytes.Clone(frame)
		verdict, out := run(t, c.Program(), frame)
		switch verdict {
		case xdpPass:
			if !bytes.Equal(out, in) {
				t.Fatalf("passed but changed:\n in %x\nout %x", in, out)
			}
		case xdpTX:
			req, ok := requestOf(in)
			if !ok {
				t.Fatalf("answered a frame that is not a UDP request: %x", in)
			}
			got := checkReply(t, req, out, nil)
			want := srv.HandleDatagram(req.Payload)
			if len(want) != 1 || !bytes.Equal(got.Payload, want[0]) {
				t.Fatalf("request %q:\nkernel %q\nserver %q", req.Payload, got.Payload, want)
			}
		default:
			t.Fatalf("verdict %d for %x", verdict, in)
		}
	})
}

// requestOf reads the addresses, ports and UDP payload of a frame the program answered, without
// judging its checksums: Ethernet, at most one 802.1Q tag, IPv4 without options or IPv6, UDP,
// the payload as long as the UDP length says.
func requestOf(b []byte) (packet.UDP, bool) {
	var u packet.UDP
	if len(b) < 14 {
		return u, false
	}
	u.DstMAC, u.SrcMAC = net.HardwareAddr(bytes.Clone(b[0:6])), net.HardwareAddr(bytes.Clone(b[6:12]))
	etype, off := binary.BigEndian.Uint16(b[12:]), 14
	if etype == packet.EtherTypeVLAN || etype == 0x88A8 {
		if len(b) < 18 {
			return u, false
		}
		u.Tagged, u.VLAN = true, binary.BigEndian.Uint16(b[14:])&0x0fff
		etype, off = binary.BigEndian.Uint16(b[16:]), 18
	}
	switch etype {
	case packet.EtherTypeIPv4:
		if len(b) < off+20 {
			return u, false
		}
		u.TOS = b[off+1]
		u.Src, u.Dst = netip.AddrFrom4([4]byte(b[off+12:])), netip.AddrFrom4([4]byte(b[off+16:]))
		off += 20
	case packet.EtherTypeIPv6:
		if len(b) < off+40 {
			return u, false
		}
		u.Src, u.Dst = netip.AddrFrom16([16]byte(b[off+8:])), netip.AddrFrom16([16]byte(b[off+24:]))
		off += 40
	default:
		return u, false
	}
	if len(b) < off+8 {
		return u, false
	}
	u.SrcPort, u.DstPort = binary.BigEndian.Uint16(b[off:]), binary.BigEndian.Uint16(b[off+2:])
	ulen := int(binary.BigEndian.Uint16(b[off+4:]))
	if ulen < 8+protocol.FrameHeaderLen || len(b) < off+ulen {
		return u, false
	}
	u.Payload = b[off+8 : off+ulen]
	return u, true
}
