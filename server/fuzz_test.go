package server

import (
	"testing"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// fuzzItemSize keeps the fuzzed server small so bounds are checked quickly.
const fuzzItemSize = 4096

// FuzzSession feeds random bytes through the text connection handling the way the TCP loop does,
// in chunks the fuzzer picks: it must never panic, never ask to buffer more than a request can
// need, and never hold more item memory than the limit.
func FuzzSession(f *testing.F) {
	for _, c := range corpus {
		if len(c.req) < 4096 {
			f.Add([]byte(c.req), uint8(7))
		}
	}
	s, err := New(Config{MemoryLimit: 64 << 10, MaxItemSize: fuzzItemSize})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		c := s.getSession(false)
		defer s.putSession(c)
		step := int(chunk)%64 + 1
		var buf []byte
		for off := 0; off < len(in) || len(buf) > 0; {
			end := min(off+step, len(in))
			buf = append(buf, in[off:end]...)
			off = end
			n, act := c.process(buf)
			if n > len(buf) {
				t.Fatalf("consumed %d of %d bytes", n, len(buf))
			}
			buf = buf[n:]
			if c.need > protocol.MaxLineLen+maxGetLine+fuzzItemSize+2 {
				t.Fatalf("asks to buffer %d bytes", c.need)
			}
			if len(buf) > maxGetLine+fuzzItemSize+protocol.MaxLineLen {
				t.Fatalf("%d bytes buffered without a complete request", len(buf))
			}
			c.out = c.out[:0]
			if act == actClose {
				break
			}
			if off == len(in) && act == actNeedMore {
				break
			}
		}
		if st := s.store.Stats(); st.Bytes > uint64(st.LimitMaxBytes) {
			t.Fatalf("store holds %d bytes over its %d limit", st.Bytes, st.LimitMaxBytes)
		}
	})
}

// FuzzHandleDatagram sends random datagrams through the UDP path: no panic, and every reply
// datagram is framed with the request id and fits MaxDatagram.
func FuzzHandleDatagram(f *testing.F) {
	for _, c := range corpus {
		if len(c.req) < 1400 && !c.tcpOnly {
			f.Add(append(protocol.FrameHeader{RequestID: 9, Total: 1}.AppendTo(nil), c.req...))
		}
	}
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 'g', 'e', 't', ' ', 'a', '\n'})
	s, err := New(Config{MemoryLimit: 64 << 10, MaxItemSize: fuzzItemSize})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		out := s.HandleDatagram(req)
		h, err := protocol.ParseFrameHeader(req)
		if err != nil || len(req) <= protocol.FrameHeaderLen || h.Total != 1 {
			if out != nil {
				t.Fatalf("answered a datagram memcached drops: %q", req)
			}
			return
		}
		for _, d := range out {
			rh, err := protocol.ParseFrameHeader(d)
			if err != nil || rh.RequestID != h.RequestID || len(d) > protocol.MaxDatagram || rh.Seq >= rh.Total {
				t.Fatalf("bad reply datagram %+v, %d bytes", rh, len(d))
			}
		}
	})
}
