package bpf

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/kernelcache"
)

// modelReply says what the kernel may answer for a UDP payload: the reply payload and true, or
// false when only passing is acceptable. It is the program's contract written plainly: one whole
// datagram, canonical get/gets, every key stored, reply within one datagram.
func modelReply(payload []byte, store map[string]kernelcache.Item) ([]byte, bool) {
	h, err := protocol.ParseFrameHeader(payload)
	if err != nil || h.Total != 1 { // memcached ignores seq and reserved
		return nil, false
	}
	line, ok := strings.CutSuffix(string(payload[protocol.FrameHeaderLen:]), "\r\n")
	if !ok || strings.ContainsAny(line, "\r\n") {
		return nil, false
	}
	var withCAS bool
	var rest string
	if r, ok := strings.CutPrefix(line, "get "); ok {
		rest = r
	} else if r, ok := strings.CutPrefix(line, "gets "); ok {
		rest, withCAS = r, true
	} else {
		return nil, false
	}
	keys := strings.Split(rest, " ")
	if len(keys) > 32 {
		return nil, false
	}
	for _, k := range keys {
		if !servableKey(k) {
			return nil, false
		}
		if _, ok := store[k]; !ok {
			return nil, false
		}
	}
	r := reply(h.RequestID, store, withCAS, keys...)
	return r, len(r) <= protocol.MaxDatagram
}

// requestFields reads addresses, ports and payload of a frame at the offsets of a plain (untagged)
// IPv4 or IPv6 request, without checking lengths or checksums: mutated requests the program
// answered still have those offsets.
func requestFields(frame []byte, v6 bool) packet.UDP {
	u := packet.UDP{DstMAC: bytes.Clone(frame[0:6]), SrcMAC: bytes.Clone(frame[6:12])}
	l4 := 14 + 20
	if v6 {
		l4 = 14 + 40
		u.Src = netipFrom16(frame[22:38])
		u.Dst = netipFrom16(frame[38:54])
	} else {
		u.Src = netipFrom4(frame[26:30])
		u.Dst = netipFrom4(frame[30:34])
	}
	u.SrcPort = binary.BigEndian.Uint16(frame[l4:])
	u.DstPort = binary.BigEndian.Uint16(frame[l4+2:])
	u.Payload = frame[l4+8:]
	return u
}

func TestProgramTruncations(t *testing.T) {
	c := newTestCache(t, Options{})
	store := testStore()
	fill(t, c, store)
	vlan := request(keysCommand("get", "alpha"))
	vlan.Tagged = true
	for _, req := range []packet.UDP{
		request(keysCommand("get", "alpha")),
		request(keysCommand("gets", "beta", "odd", "gamma")),
		request6(keysCommand("get", "alpha", "beta")),
		vlan,
	} {
		full := req.Bytes()
		if v, _ := run(t, c.Program(), full); v != xdpTX {
			t.Fatalf("untruncated %q: verdict %d, want XDP_TX", req.Payload, v)
		}
		// BPF_PROG_RUN needs an Ethernet header, so truncations start at 14 bytes.
		for n := 14; n < len(full); n++ {
			in := bytes.Clone(full[:n])
			v, out := run(t, c.Program(), in)
			if v != xdpPass || !bytes.Equal(out, full[:n]) {
				t.Fatalf("%q truncated to %d bytes: verdict %d, unchanged %v", req.Payload, n, v, bytes.Equal(out, full[:n]))
			}
		}
	}
}

func TestProgramMutations(t *testing.T) {
	c := newTestCache(t, Options{})
	store := testStore()
	fill(t, c, store)
	for _, req := range []packet.UDP{
		request(keysCommand("get", "alpha", "beta")),
		request6(keysCommand("gets", "odd")),
	} {
		v6 := req.Src.Is6()
		full := req.Bytes()
		answered := 0
		for off := range full {
			for _, val := range []byte{full[off] ^ 0x01, full[off] ^ 0x20, full[off] ^ 0x80, 0x00, 0xff, ' ', '\r', '\n', 'a'} {
				if val == full[off] {
					continue
				}
				in := bytes.Clone(full)
				in[off] = val
				v, out := run(t, c.Program(), bytes.Clone(in))
				switch v {
				case xdpPass:
					if !bytes.Equal(out, in) {
						t.Fatalf("byte %d = %#x: passed but changed", off, val)
					}
				case xdpTX:
					answered++
					mreq := requestFields(in, v6)
					want, ok := modelReply(mreq.Payload, store)
					if !ok {
						t.Fatalf("byte %d = %#x: answered %q, which the kernel must pass", off, val, mreq.Payload)
					}
					checkReply(t, mreq, out, want)
					if t.Failed() {
						t.Fatalf("byte %d = %#x: wrong reply", off, val)
					}
				default:
					t.Fatalf("byte %d = %#x: verdict %d", off, val, v)
				}
			}
		}
		// MAC, checksum and address bytes do not change the answer: some mutations must be
		// answered, or this test would pass a program that answers nothing.
		if answered == 0 {
			t.Fatalf("%q: no mutation was answered", req.Payload)
		}
		t.Logf("%q: %d mutations answered correctly, the rest passed unchanged", req.Payload, answered)
	}
}
