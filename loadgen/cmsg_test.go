package loadgen

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	binary.NativeEndian.PutUint64(b, uint64(unix.CmsgLen(len(data))))
	binary.NativeEndian.PutUint32(b[8:], uint32(level))
	binary.NativeEndian.PutUint32(b[12:], uint32(typ))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func TestParseCmsgs(t *testing.T) {
	ts := make([]byte, 16)
	binary.NativeEndian.PutUint64(ts, 1_700_000_000)
	binary.NativeEndian.PutUint64(ts[8:], 123)
	tclass := make([]byte, 4)
	binary.NativeEndian.PutUint32(tclass, 0x28)
	for _, c := range []struct {
		name    string
		oob     []byte
		tos     int
		rxUnixN int64
	}{
		{"none", nil, -1, 0},
		{"tos", cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{0x29}), 0x29, 0},
		{"tclass", cmsg(unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tclass), 0x28, 0},
		{"timestamp then tos", append(cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS, ts), cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{8})...), 8, 1_700_000_000_000_000_123},
		{"truncated", cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{8})[:10], -1, 0},
		{"bad length", func() []byte {
			b := cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{8})
			binary.NativeEndian.PutUint64(b, 1000)
			return b
		}(), -1, 0},
	} {
		tos, rx := parseCmsgs(c.oob)
		if tos != c.tos || rx != c.rxUnixN {
			t.Errorf("%s: tos %d rx %d, want %d %d", c.name, tos, rx, c.tos, c.rxUnixN)
		}
	}
}

// TestParseReply feeds TCP replies whole and cut at every byte: a prefix must never be taken
// for a reply.
func TestParseReply(t *testing.T) {
	for _, c := range []struct {
		in    string
		class Class
		key   string
		err   bool
	}{
		{"VALUE k1 0 5\r\nhello\r\nEND\r\n", UserHit, "k1", false},
		{"VALUE k1 7 0 99\r\n\r\nEND\r\n", UserHit, "k1", false},
		{"END\r\n", UserMiss, "", false},
		{"STORED\r\n", Set, "", false},
		{"SERVER_ERROR out of memory\r\n", 0, "", true},
		{"ERROR\r\n", 0, "", true},
		{"VALUE k1 0 5\r\nhelloXXEND\r\n", 0, "", true},
		{"VALUE k1 0\r\n", 0, "", true},
		{"VALUE k1 x 5\r\nhello\r\nEND\r\n", 0, "", true},
		{"VALUE k1 0 5 1 extra\r\n", 0, "", true},
	} {
		n, class, key, err := parseReply([]byte(c.in + "END\r\n")) // a following reply must be left alone
		if c.err {
			// An error consumes at least its line, at most the input given.
			if err == nil || n == 0 || n > len(c.in) {
				t.Errorf("%q: n %d err %v, want an error reply", c.in, n, err)
			}
			continue
		}
		if n != len(c.in) || class != c.class || string(key) != c.key || err != nil {
			t.Errorf("%q: n %d class %v key %q err %v", c.in, n, class, key, err)
		}
		for cut := 0; cut < len(c.in); cut++ {
			if n, _, _, err := parseReply([]byte(c.in[:cut])); n != 0 && err == nil {
				t.Errorf("%q cut at %d parsed as a whole reply of %d bytes", c.in, cut, n)
			}
		}
	}
}
