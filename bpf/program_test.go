package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/kernelcache"
)

// testStore is what the table tests put in the kernel cache.
func testStore() map[string]kernelcache.Item {
	s := map[string]kernelcache.Item{}
	for _, it := range []kernelcache.Item{
		item("alpha", "one", 0, 11),
		item("beta", "second value", 7, 12),
		item("gamma", "", 4294967295, 13),
		item("odd", "x", 1, 18446744073709551615),
		item("big", strings.Repeat("b", 1000), 0, 15),
		item("big2", strings.Repeat("c", 1000), 0, 16),
		item(strings.Repeat("k", 250), "longest key", 3, 17),
		item("\x10\x10\x10\x10\x10\x10\x10\x10memcaslap-key", "control bytes", 0, 19),
		item("ключ\x7f\xff", "8-bit bytes", 9, 20),
	} {
		s[it.Key] = it
	}
	return s
}

func fill(t testing.TB, c *Cache, store map[string]kernelcache.Item) {
	t.Helper()
	for _, it := range store {
		offer(t, c, it)
	}
	if n, _ := c.Len(); n != len(store) {
		t.Fatalf("%d entries installed, want %d", n, len(store))
	}
}

func TestProgramTable(t *testing.T) {
	c := newTestCache(t, Options{})
	store := testStore()
	fill(t, c, store)
	longKey := strings.Repeat("k", 250)

	type tc struct {
		name    string
		req     packet.UDP
		gets    bool
		keys    []string // a hit: the keys of the reply
		reason  xdpcacheCounter
		mangle  func([]byte) []byte // applied to the encoded frame
		rid     *uint16             // the reply's request id when mangle changes it; 0x1234 otherwise
		noCheck bool
	}
	vlan := request(keysCommand("get", "alpha"))
	vlan.Tagged, vlan.VLAN = true, 100
	vlan6 := request6(keysCommand("gets", "beta", "odd"))
	vlan6.Tagged, vlan6.VLAN = true, 7
	opts := request(keysCommand("get", "alpha"))
	opts.IPOptions = []byte{0x94, 0x04, 0, 0} // router alert
	wrongPort := request(keysCommand("get", "alpha"))
	wrongPort.DstPort = 11212
	zeroCsum := request(keysCommand("get", "alpha"))
	zeroCsum.NoChecksum = true
	tooMany := make([]string, 33)
	for i := range tooMany {
		tooMany[i] = "alpha"
	}
	most := tooMany[:32] // the most keys the program answers
	// Keys after the first are looked up four to a call, and entries written four to a call:
	// requests that end at and just past a call's last key, and a miss in a later call.
	batchEnd := []string{"alpha", "beta", "gamma", "odd", "alpha"}
	batchNext := append(append([]string{}, batchEnd...), "beta")
	missSecondCall := append(append([]string{}, batchNext...), "nope")
	setU16 := func(off int, v uint16) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint16(b[off:], v); return b }
	}
	const udpOff = 14 + 20
	u16 := func(v uint16) *uint16 { return &v }

	cases := []tc{
		{name: "hit", req: request(keysCommand("get", "alpha")), keys: []string{"alpha"}},
		{name: "hit empty value max flags", req: request(keysCommand("get", "gamma")), keys: []string{"gamma"}},
		{name: "hit 1000 byte value", req: request(keysCommand("get", "big")), keys: []string{"big"}},
		{name: "hit longest key", req: request(keysCommand("get", longKey)), keys: []string{longKey}},
		{name: "hit zero udp checksum", req: zeroCsum, keys: []string{"alpha"}},
		{name: "miss", req: request(keysCommand("get", "nope")), reason: xdpcacheCounterPASS_MISS},
		{name: "miss prefix of a key", req: request(keysCommand("get", "alph")), reason: xdpcacheCounterPASS_MISS},
		{name: "miss extension of a key", req: request(keysCommand("get", "alphaa")), reason: xdpcacheCounterPASS_MISS},
		{name: "multi all hit", req: request(keysCommand("get", "alpha", "beta", "gamma", "odd")), keys: []string{"alpha", "beta", "gamma", "odd"}},
		{name: "multi same key twice", req: request(keysCommand("get", "odd", "odd")), keys: []string{"odd", "odd"}},
		{name: "multi partial", req: request(keysCommand("get", "alpha", "nope")), reason: xdpcacheCounterPASS_PARTIAL},
		{name: "multi first missing", req: request(keysCommand("get", "nope", "alpha")), reason: xdpcacheCounterPASS_MISS},
		{name: "gets", req: request(keysCommand("gets", "alpha")), gets: true, keys: []string{"alpha"}},
		{name: "gets multi odd offsets", req: request(keysCommand("gets", "odd", "beta", "gamma", "odd")), gets: true, keys: []string{"odd", "beta", "gamma", "odd"}},
		{name: "vlan", req: vlan, keys: []string{"alpha"}},
		{name: "ipv6", req: request6(keysCommand("get", "beta", "alpha")), keys: []string{"beta", "alpha"}},
		{name: "ipv6 vlan gets", req: vlan6, gets: true, keys: []string{"beta", "odd"}},
		{name: "ipv4 options", req: opts, reason: xdpcacheCounterPASS_IP_OPTIONS},
		{name: "wrong port", req: wrongPort, reason: xdpcacheCounterPASS_WRONG_PORT},
		{name: "too big multi", req: request(keysCommand("get", "big", "big2")), reason: xdpcacheCounterPASS_TOO_BIG},
		{name: "too many keys", req: request(keysCommand("get", tooMany...)), reason: xdpcacheCounterPASS_TOO_MANY_KEYS},
		{name: "most keys", req: request(keysCommand("get", most...)), keys: most},
		{name: "multi end of a lookup call", req: request(keysCommand("get", batchEnd...)), keys: batchEnd},
		{name: "multi past a lookup call", req: request(keysCommand("gets", batchNext...)), gets: true, keys: batchNext},
		{name: "multi miss in a later lookup call", req: request(keysCommand("get", missSecondCall...)), reason: xdpcacheCounterPASS_PARTIAL},
		{name: "key too long", req: request(keysCommand("get", longKey+"k")), reason: xdpcacheCounterPASS_KEY_TOO_LONG},
		{name: "set", req: request("set alpha 0 0 1\r\nx\r\n"), reason: xdpcacheCounterPASS_NOT_GET},
		{name: "uppercase", req: request("GET alpha\r\n"), reason: xdpcacheCounterPASS_NOT_GET},
		{name: "gat", req: request("gat 0 alpha\r\n"), reason: xdpcacheCounterPASS_NOT_GET},
		{name: "get no key", req: request("get \r\n"), reason: xdpcacheCounterPASS_NOT_GET},
		{name: "gets no key", req: request("gets \r\n"), reason: xdpcacheCounterPASS_MALFORMED},
		{name: "double space", req: request("get alpha  beta\r\n"), reason: xdpcacheCounterPASS_MALFORMED},
		{name: "trailing space", req: request("get alpha \r\n"), reason: xdpcacheCounterPASS_MALFORMED},
		{name: "bare newline", req: request("get alpha\n"), reason: xdpcacheCounterPASS_MALFORMED},
		{name: "pipelined", req: request("get alpha\r\nget beta\r\n"), reason: xdpcacheCounterPASS_MALFORMED},
		// memcached splits keys on spaces only: control and 8-bit bytes are key bytes.
		{name: "control byte in key miss", req: request("get al\tpha\r\n"), reason: xdpcacheCounterPASS_MISS},
		{name: "control bytes in key", req: request(keysCommand("get", "\x10\x10\x10\x10\x10\x10\x10\x10memcaslap-key")), keys: []string{"\x10\x10\x10\x10\x10\x10\x10\x10memcaslap-key"}},
		{name: "8-bit bytes in key", req: request(keysCommand("gets", "alpha", "ключ\x7f\xff")), gets: true, keys: []string{"alpha", "ключ\x7f\xff"}},
		{name: "carriage return in key", req: request("get al\rpha\r\n"), reason: xdpcacheCounterPASS_MALFORMED},
		{name: "nul byte ends no key", req: request("get al\x00pha\r\n"), reason: xdpcacheCounterPASS_MISS},
		{name: "no line end", req: request("get alpha"), reason: xdpcacheCounterPASS_MALFORMED},
		// The frame header as memcached reads it: only "1 datagram in total" is checked; the
		// sequence number and the reserved bytes are ignored, and the reply's frame is always
		// the request id, seq 0, total 1, reserved 0.
		{name: "frame request id 0", req: request(keysCommand("get", "alpha")), keys: []string{"alpha"}, rid: u16(0),
			mangle: setU16(udpOff+8, 0)},
		{name: "frame request id ffff", req: request(keysCommand("get", "alpha")), keys: []string{"alpha"}, rid: u16(0xffff),
			mangle: setU16(udpOff+8, 0xffff)},
		{name: "frame seq 1", req: request(keysCommand("get", "alpha")), keys: []string{"alpha"},
			mangle: setU16(udpOff+8+2, 1)},
		{name: "frame seq ffff", req: request(keysCommand("gets", "beta", "odd")), gets: true, keys: []string{"beta", "odd"},
			mangle: setU16(udpOff+8+2, 0xffff)},
		{name: "frame reserved memcaslap", req: request(keysCommand("get", "alpha")), keys: []string{"alpha"},
			mangle: setU16(udpOff+8+6, 0x0100)},
		{name: "frame reserved ffff", req: request(keysCommand("get", "big")), keys: []string{"big"},
			mangle: setU16(udpOff+8+6, 0xffff)},
		{name: "frame total 0", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_NOT_FRAMED,
			mangle: setU16(udpOff+8+4, 0)},
		{name: "frame total 2", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_NOT_FRAMED,
			mangle: setU16(udpOff+8+4, 2)},
		{name: "frame total 0100", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_NOT_FRAMED,
			mangle: setU16(udpOff+8+4, 0x0100)},
		{name: "udp length short", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_MALFORMED,
			mangle: setU16(udpOff+4, 20)},
		{name: "ip length long", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_MALFORMED,
			mangle: setU16(14+2, 200)},
		{name: "fragment", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_FRAGMENT,
			mangle: setU16(14+6, 0x2000)},
		{name: "not udp", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_NOT_IP_UDP,
			mangle: func(b []byte) []byte { b[14+9] = 6; return b }},
		{name: "arp", req: request(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_NOT_IP_UDP,
			mangle: setU16(12, 0x0806)},
		{name: "ipv6 extension header", req: request6(keysCommand("get", "alpha")), reason: xdpcacheCounterPASS_IPV6EXT,
			mangle: func(b []byte) []byte { b[14+6] = 0; return b }},
		{name: "link padding", req: request(keysCommand("get", "alpha")), keys: []string{"alpha"},
			mangle: func(b []byte) []byte { return append(b, make([]byte, 8)...) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame := tc.req.Bytes()
			if tc.mangle != nil {
				frame = tc.mangle(frame)
			}
			in := bytes.Clone(frame)
			var verdict uint32
			var out []byte
			d := counterDelta(t, c, func() { verdict, out = run(t, c.Program(), frame) })
			if tc.keys == nil {
				if verdict != xdpPass || !bytes.Equal(out, in) {
					t.Fatalf("verdict %d, packet changed %v; want XDP_PASS unchanged", verdict, !bytes.Equal(out, in))
				}
				if d[tc.reason] != 1 || d[xdpcacheCounterCNT_REQUESTS] != 0 {
					t.Fatalf("counters %v: want one %q pass", d, passReasons[tc.reason])
				}
				return
			}
			if verdict != xdpTX {
				t.Fatalf("verdict %d, want XDP_TX; counters %v", verdict, d)
			}
			rid := uint16(0x1234)
			if tc.rid != nil {
				rid = *tc.rid
			}
			want := reply(rid, store, tc.gets, tc.keys...)
			p := checkReply(t, tc.req, out, want)
			if p.TOS != tc.req.TOS {
				t.Errorf("TOS %#x changed with the mark off", p.TOS)
			}
			if d[xdpcacheCounterCNT_REQUESTS] != 1 || d[xdpcacheCounterCNT_HITS] != uint64(len(tc.keys)) ||
				d[xdpcacheCounterCNT_BYTES] != uint64(len(want)) {
				t.Fatalf("counters %v: want 1 request, %d hits, %d bytes", d, len(tc.keys), len(want))
			}
		})
	}
}

func TestProgramExpiredAndFlushed(t *testing.T) {
	c := newTestCache(t, Options{})
	exp := item("soon", "v", 0, 1)
	exp.Expires = time.Now().Add(40 * time.Millisecond)
	offer(t, c, exp)
	offer(t, c, item("stay", "v", 0, 2))
	req := request(keysCommand("get", "soon"))
	if v, _ := run(t, c.Program(), req.Bytes()); v != xdpTX {
		t.Fatalf("before expiry: verdict %d, want XDP_TX", v)
	}
	time.Sleep(50 * time.Millisecond)
	d := counterDelta(t, c, func() {
		if v, out := run(t, c.Program(), req.Bytes()); v != xdpPass || !bytes.Equal(out, req.Bytes()) {
			t.Fatalf("after expiry: verdict %d, want XDP_PASS unchanged", v)
		}
	})
	if d[xdpcacheCounterPASS_EXPIRED] != 1 {
		t.Fatalf("counters %v: want one expired pass", d)
	}

	stay := request(keysCommand("get", "stay"))
	if v, _ := run(t, c.Program(), stay.Bytes()); v != xdpTX {
		t.Fatalf("before flush: verdict %d", v)
	}
	if err := c.Flush(time.Now()); err != nil {
		t.Fatal(err)
	}
	d = counterDelta(t, c, func() {
		if v, _ := run(t, c.Program(), stay.Bytes()); v != xdpPass {
			t.Fatalf("after flush: verdict %d, want XDP_PASS", v)
		}
	})
	if d[xdpcacheCounterPASS_FLUSHED] != 1 {
		t.Fatalf("counters %v: want one flushed pass", d)
	}
	// A fill after the flush is served again.
	time.Sleep(time.Millisecond)
	offer(t, c, item("stay", "again", 0, 3))
	if v, out := run(t, c.Program(), stay.Bytes()); v != xdpTX {
		t.Fatalf("refill after flush: verdict %d", v)
	} else {
		checkReply(t, stay, out, reply(0x1234, map[string]kernelcache.Item{"stay": item("stay", "again", 0, 3)}, false, "stay"))
	}

	// A delayed flush stops the kernel at once (conservatively) and keeps later fills out
	// until the deadline.
	if err := c.Flush(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if v, _ := run(t, c.Program(), stay.Bytes()); v != xdpPass {
		t.Fatalf("after delayed flush: verdict %d, want XDP_PASS", v)
	}
}

func TestProgramInvalidate(t *testing.T) {
	c := newTestCache(t, Options{})
	offer(t, c, item("k", "old", 0, 1))
	req := request(keysCommand("get", "k"))
	if v, _ := run(t, c.Program(), req.Bytes()); v != xdpTX {
		t.Fatalf("verdict %d, want XDP_TX", v)
	}
	if err := c.Invalidate("k"); err != nil {
		t.Fatal(err)
	}
	if v, _ := run(t, c.Program(), req.Bytes()); v != xdpPass {
		t.Fatalf("after Invalidate: verdict %d, want XDP_PASS", v)
	}
	// Replacement through Offer: the new value is served, never the old.
	offer(t, c, item("k", "new", 5, 2))
	offer(t, c, item("k", "newer value", 6, 3))
	v, out := run(t, c.Program(), req.Bytes())
	if v != xdpTX {
		t.Fatalf("verdict %d", v)
	}
	checkReply(t, req, out, reply(0x1234, map[string]kernelcache.Item{"k": item("k", "newer value", 6, 3)}, false, "k"))
	if n, _ := c.Len(); n != 1 {
		t.Fatalf("%d entries, want 1", n)
	}
}

func TestProgramReplyMark(t *testing.T) {
	c := newTestCache(t, Options{ReplyDSCP: 46})
	offer(t, c, item("k", "v", 0, 1))
	for _, req := range []packet.UDP{request(keysCommand("get", "k")), request6(keysCommand("get", "k"))} {
		req.TOS = 0x03 // ECN bits survive the mark
		t.Run(fmt.Sprintf("ipv6=%v", req.Src.Is6()), func(t *testing.T) {
			v, out := run(t, c.Program(), req.Bytes())
			if v != xdpTX {
				t.Fatalf("verdict %d", v)
			}
			p := checkReply(t, req, out, reply(0x1234, map[string]kernelcache.Item{"k": item("k", "v", 0, 1)}, false, "k"))
			if p.TOS != 46<<2|3 {
				t.Fatalf("TOS %#x, want %#x", p.TOS, 46<<2|3)
			}
		})
	}
}

func TestProgramMTU(t *testing.T) {
	c := newTestCache(t, Options{MTU: 576})
	if err := c.Offer(item("big", strings.Repeat("x", 1000), 0, 1)); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Len(); n != 0 {
		t.Fatal("an item whose reply exceeds the MTU was installed")
	}
	offer(t, c, item("small", strings.Repeat("x", 500), 0, 1))
	req := request(keysCommand("get", "small", "small"))
	d := counterDelta(t, c, func() {
		if v, _ := run(t, c.Program(), req.Bytes()); v != xdpPass {
			t.Fatalf("verdict %d, want XDP_PASS for a reply over the MTU", v)
		}
	})
	if d[xdpcacheCounterPASS_TOO_BIG] != 1 {
		t.Fatalf("counters %v", d)
	}
}

// TestProgramCopySizes: entries of every size the copies treat differently are written whole and
// exactly: pieces under a word (bpf_xdp_store_bytes), word by word up to 128 bytes, 64-byte blocks
// above with an overlapping last block, for get and for gets (two pieces around the CAS), as the
// last key and before another.
func TestProgramCopySizes(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 4096, MaxBytes: 64 << 20, Admission: AdmitAlways})
	store := map[string]kernelcache.Item{"tail": item("tail", "t", 0, 1)}
	offer(t, c, store["tail"])
	var sizes []int
	for n := 0; n <= 200; n++ {
		sizes = append(sizes, n)
	}
	for n := 1000; n <= 1360; n += 9 {
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		key := fmt.Sprintf("v%-39d", n) // long enough that no reply hits the amplification cap
		key = strings.ReplaceAll(key, " ", ".")
		store[key] = item(key, strings.Repeat(string(rune('a'+n%26)), n), uint32(n), uint64(n)+100)
		offer(t, c, store[key])
		// An entry is installed only if its gets reply fits one datagram (Offer).
		installed := len(reply(0x1234, store, true, key)) <= maxPayload
		for _, verb := range []string{"get", "gets"} {
			for _, keys := range [][]string{{key}, {key, "tail"}} {
				req := request(keysCommand(verb, keys...))
				verdict, out := run(t, c.Program(), req.Bytes())
				want := reply(0x1234, store, verb == "gets", keys...)
				if !installed || len(want) > maxPayload {
					if verdict != xdpPass {
						t.Fatalf("%s %v (%d-byte value): verdict %d, want XDP_PASS: not installed, or the reply is over one datagram", verb, keys, n, verdict)
					}
					continue
				}
				if verdict != xdpTX {
					t.Fatalf("%s %v (%d-byte value): verdict %d, want XDP_TX", verb, keys, n, verdict)
				}
				checkReply(t, req, out, want)
			}
		}
	}
}
