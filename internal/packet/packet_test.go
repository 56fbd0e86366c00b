package packet

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		u    UDP
	}{
		{"ipv4", UDP{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SrcPort: 4000, DstPort: 11211}},
		{"ipv4 vlan tos", UDP{Tagged: true, VLAN: 42, TOS: 0xb8, Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SrcPort: 1, DstPort: 2}},
		{"ipv4 options", UDP{IPOptions: []byte{1, 1, 1, 0}, Src: netip.MustParseAddr("127.0.0.1"), Dst: netip.MustParseAddr("127.0.0.2"), SrcPort: 1, DstPort: 2}},
		{"ipv6", UDP{TOS: 0x2c, Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), SrcPort: 9, DstPort: 11211}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, odd := range []string{"get k\r\n", "get kk\r\n"} {
				tc.u.Payload = Memcached(7, odd)
				p, err := Parse(tc.u.Bytes())
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(p.Payload, tc.u.Payload) || p.Src != tc.u.Src || p.Dst != tc.u.Dst ||
					p.SrcPort != tc.u.SrcPort || p.DstPort != tc.u.DstPort || p.TOS != tc.u.TOS ||
					p.Tagged != tc.u.Tagged || p.VLAN != tc.u.VLAN {
					t.Fatalf("parsed %+v from %+v", p, tc.u)
				}
			}
		})
	}
}

func TestParseRejectsCorruption(t *testing.T) {
	u := UDP{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SrcPort: 1, DstPort: 2, Payload: Memcached(1, "get a\r\n")}
	b := u.Bytes()
	// Flip a payload byte: the UDP checksum must catch it.
	b[len(b)-3] ^= 0x40
	if _, err := Parse(b); !errors.Is(err, ErrChecksum) {
		t.Fatalf("payload flip: err %v, want ErrChecksum", err)
	}
	b = u.Bytes()
	b[14+8] ^= 1 // TTL: the IPv4 header checksum must catch it
	if _, err := Parse(b); !errors.Is(err, ErrChecksum) {
		t.Fatalf("ttl flip: err %v, want ErrChecksum", err)
	}
	if _, err := Parse(u.Bytes()[:30]); err == nil {
		t.Fatal("truncated frame parsed")
	}
}
