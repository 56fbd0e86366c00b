// Package packet builds and parses the Ethernet/802.1Q/IPv4/IPv6/UDP frames that carry memcached
// UDP requests, for tests that feed packets to the XDP program and check what comes back. It uses
// only encoding/binary, so a test states every byte it sends.
package packet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/xdpcache/xdpcache/internal/checksum"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// EtherType values the builder writes.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeIPv6 = 0x86DD
	EtherTypeVLAN = 0x8100
)

const (
	ethLen   = 14
	vlanLen  = 4
	ipv4Len  = 20
	ipv6Len  = 40
	udpLen   = 8
	protoUDP = 17
)

// Errors from Parse.
var (
	ErrShort    = errors.New("packet: truncated")
	ErrChecksum = errors.New("packet: bad checksum")
	ErrNotUDP   = errors.New("packet: not IPv4/IPv6 UDP")
)

// UDP describes one UDP datagram on Ethernet. The zero values of the optional fields give a plain
// IPv4 packet with no VLAN tag.
type UDP struct {
	SrcMAC, DstMAC   net.HardwareAddr // 6 bytes each; nil means zeros
	VLAN             uint16           // VLAN ID; used only when Tagged
	Tagged           bool             // add one 802.1Q tag
	Src, Dst         netip.Addr       // both IPv4 or both IPv6
	TOS              uint8            // IPv4 TOS or IPv6 traffic class
	TTL              uint8            // IPv4 TTL or IPv6 hop limit; 0 means 64
	IPOptions        []byte           // IPv4 options, a multiple of 4 bytes
	SrcPort, DstPort uint16
	Payload          []byte // the UDP payload, frame header included
	NoChecksum       bool   // leave the UDP checksum zero (IPv4 only)
}

// Memcached returns a UDP payload: the frame header for a one-datagram message and the command.
func Memcached(requestID uint16, command string) []byte {
	b := protocol.FrameHeader{RequestID: requestID, Total: 1}.AppendTo(nil)
	return append(b, command...)
}

// Bytes encodes the frame.
func (u UDP) Bytes() []byte {
	b := make([]byte, 0, ethLen+vlanLen+ipv6Len+len(u.IPOptions)+udpLen+len(u.Payload))
	b = appendMAC(b, u.DstMAC)
	b = appendMAC(b, u.SrcMAC)
	v6 := u.Src.Is6() && !u.Src.Is4In6()
	etype := uint16(EtherTypeIPv4)
	if v6 {
		etype = EtherTypeIPv6
	}
	if u.Tagged {
		b = binary.BigEndian.AppendUint16(b, EtherTypeVLAN)
		b = binary.BigEndian.AppendUint16(b, u.VLAN&0x0fff)
	}
	b = binary.BigEndian.AppendUint16(b, etype)
	ttl := u.TTL
	if ttl == 0 {
		ttl = 64
	}
	ulen := udpLen + len(u.Payload)
	ipStart := len(b)
	if v6 {
		b = binary.BigEndian.AppendUint32(b, 6<<28|uint32(u.TOS)<<20)
		b = binary.BigEndian.AppendUint16(b, uint16(ulen))
		b = append(b, protoUDP, ttl)
		s, d := u.Src.As16(), u.Dst.As16()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	} else {
		ihl := (ipv4Len + len(u.IPOptions)) / 4
		b = append(b, byte(4<<4|ihl), u.TOS)
		b = binary.BigEndian.AppendUint16(b, uint16(ihl*4+ulen))
		b = append(b, 0x12, 0x34, 0x40, 0) // ID, DF
		b = append(b, ttl, protoUDP, 0, 0)
		s, d := u.Src.As4(), u.Dst.As4()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
		b = append(b, u.IPOptions...)
		binary.BigEndian.PutUint16(b[ipStart+10:], ^checksum.Fold(checksum.Sum(b[ipStart:])))
	}
	udpStart := len(b)
	b = binary.BigEndian.AppendUint16(b, u.SrcPort)
	b = binary.BigEndian.AppendUint16(b, u.DstPort)
	b = binary.BigEndian.AppendUint16(b, uint16(ulen))
	b = append(b, 0, 0)
	b = append(b, u.Payload...)
	if !u.NoChecksum || v6 {
		binary.BigEndian.PutUint16(b[udpStart+6:], udpChecksum(b[ipStart:udpStart], v6, b[udpStart:]))
	}
	return b
}

func appendMAC(b []byte, m net.HardwareAddr) []byte {
	if len(m) != 6 {
		return append(b, 0, 0, 0, 0, 0, 0)
	}
	return append(b, m...)
}

func udpChecksum(ip []byte, v6 bool, udp []byte) uint16 {
	var s uint64
	if v6 {
		s = checksum.Sum(ip[8:40])
	} else {
		s = checksum.Sum(ip[12:20])
	}
	s += protoUDP + uint64(len(udp))
	s += checksum.Sum(udp)
	c := ^checksum.Fold(s)
	if c == 0 {
		c = 0xffff
	}
	return c
}

// Parsed is a decoded frame.
type Parsed struct {
	SrcMAC, DstMAC   net.HardwareAddr
	Tagged           bool
	VLAN             uint16
	Src, Dst         netip.Addr
	TOS, TTL         uint8
	SrcPort, DstPort uint16
	Payload          []byte
}

// Parse decodes an Ethernet frame carrying UDP and verifies the IPv4 header checksum and the UDP
// checksum (required on IPv6; checked on IPv4 when not zero). Lengths must agree exactly.
func Parse(b []byte) (Parsed, error) {
	var p Parsed
	if len(b) < ethLen {
		return p, ErrShort
	}
	p.DstMAC, p.SrcMAC = net.HardwareAddr(b[0:6]), net.HardwareAddr(b[6:12])
	etype := binary.BigEndian.Uint16(b[12:])
	off := ethLen
	if etype == EtherTypeVLAN {
		if len(b) < off+vlanLen {
			return p, ErrShort
		}
		p.Tagged, p.VLAN = true, binary.BigEndian.Uint16(b[off:])&0x0fff
		etype = binary.BigEndian.Uint16(b[off+2:])
		off += vlanLen
	}
	ip := b[off:]
	var udp []byte
	v6 := false
	switch etype {
	case EtherTypeIPv4:
		if len(ip) < ipv4Len || ip[0]>>4 != 4 || ip[9] != protoUDP {
			return p, ErrNotUDP
		}
		hl := int(ip[0]&0xf) * 4
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if tot != len(ip) || hl < ipv4Len || tot < hl+udpLen {
			return p, fmt.Errorf("packet: IPv4 total length %d for %d bytes: %w", tot, len(ip), ErrShort)
		}
		if checksum.Fold(checksum.Sum(ip[:hl])) != 0xffff {
			return p, fmt.Errorf("packet: IPv4 header: %w", ErrChecksum)
		}
		p.TOS, p.TTL = ip[1], ip[8]
		p.Src, p.Dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		udp = ip[hl:]
	case EtherTypeIPv6:
		if len(ip) < ipv6Len || ip[0]>>4 != 6 || ip[6] != protoUDP {
			return p, ErrNotUDP
		}
		if pl := int(binary.BigEndian.Uint16(ip[4:])); pl != len(ip)-ipv6Len {
			return p, fmt.Errorf("packet: IPv6 payload length %d for %d bytes: %w", pl, len(ip)-ipv6Len, ErrShort)
		}
		p.TOS = uint8(binary.BigEndian.Uint32(ip) >> 20)
		p.TTL = ip[7]
		p.Src, p.Dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		udp, v6 = ip[ipv6Len:], true
	default:
		return p, ErrNotUDP
	}
	if len(udp) < udpLen || int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
		return p, fmt.Errorf("packet: UDP length: %w", ErrShort)
	}
	if c := binary.BigEndian.Uint16(udp[6:]); c != 0 || v6 {
		var s uint64
		if v6 {
			s = checksum.Sum(ip[8:40])
		} else {
			s = checksum.Sum(ip[12:20])
		}
		s += protoUDP + uint64(len(udp)) + checksum.Sum(udp)
		if c == 0 || checksum.Fold(s) != 0xffff {
			return p, fmt.Errorf("packet: UDP: %w", ErrChecksum)
		}
	}
	p.SrcPort, p.DstPort = binary.BigEndian.Uint16(udp), binary.BigEndian.Uint16(udp[2:])
	p.Payload = udp[udpLen:]
	return p, nil
}
