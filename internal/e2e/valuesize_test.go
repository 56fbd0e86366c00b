package e2e

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// TestKernelAnswersEveryValueSize: on a veth pair in native mode and on lo in generic mode, where
// an XDP frame has room for replies of a few hundred bytes at most, get, gets and mg (also with a
// base64 key) of values from
// small to the largest whose reply fits one datagram are answered in the kernel (the mark on every
// reply, the server's UDP counter still), byte for byte what the server answers; the large ones by
// the TC program.
func TestKernelAnswersEveryValueSize(t *testing.T) {
	for _, where := range []struct {
		name string
		rig  func(*testing.T, string) *rig
	}{{"veth native", newRig}, {"veth native ipv6", newRig6}, {"lo generic", newLoopbackRig}} {
		t.Run(where.name, func(t *testing.T) {
			r := where.rig(t, "always")
			mc := r.memcacheClient()
			u := r.udpGetter(t, replyWait)
			for _, size := range []int{64, 300, 1000, -1} {
				key := fmt.Sprintf("value-%d", size)
				if size < 0 {
					key = "value-largest"
					size = largestDatagramValue(key)
				}
				value := []byte(strings.Repeat(string(rune('a'+size%26)), size))
				if err := mc.Set(&memcache.Item{Key: key, Value: value, Flags: 3}); err != nil {
					t.Fatalf("TCP set %d bytes: %v", size, err)
				}
				for _, verb := range []string{"get", "gets", "mg", "mg b"} {
					req := verb + " " + key + "\r\n"
					switch verb {
					case "mg":
						req = "mg " + key + " v f c t\r\n"
					case "mg b":
						req = "mg " + base64.StdEncoding.EncodeToString([]byte(key)) + " b v\r\n"
					}
					want := userspaceReply(t, r, req)
					if len(want)+protocol.FrameHeaderLen > protocol.MaxDatagram {
						t.Fatalf("%d-byte value: the reply needs more than one datagram", size)
					}
					// The first get reaches the server and fills the kernel cache.
					if reply, _, err := u.do(req); err != nil || reply != want {
						t.Fatalf("%s of %d bytes, first: %q err %v", verb, size, firstLine(reply), err)
					}
					udpBefore, tcBefore := r.stat(t, "udp_requests"), r.tcHits(t)
					const n = 10
					for i := 0; i < n; i++ {
						reply, kernel, err := u.do(req)
						if err != nil || reply != want {
							t.Fatalf("%s of %d bytes: %q err %v; want the server's %q", verb, size, firstLine(reply), err, firstLine(want))
						}
						if !kernel {
							t.Fatalf("%s of %d bytes: answered without the kernel mark", verb, size)
						}
					}
					if got := r.stat(t, "udp_requests") - udpBefore; got != 0 {
						t.Errorf("%s of %d bytes: the server saw %d requests the kernel should have answered", verb, size, got)
					}
					// A reply this much larger than the request cannot be built in an XDP frame here.
					if tc := r.tcHits(t) - tcBefore; size >= 1000 && tc != n {
						t.Errorf("%s of %d bytes: TC served %d of %d", verb, size, tc, n)
					}
				}
			}
		})
	}
}

// largestDatagramValue is the largest value of key (flags 3, a CAS unique under 10 digits) whose
// gets reply still fits one datagram, as the kernel cache requires of an entry.
func largestDatagramValue(key string) int {
	for n := protocol.MaxDatagram; n > 0; n-- {
		reply := fmt.Sprintf("VALUE %s 3 %d 123456789\r\n", key, n)
		if protocol.FrameHeaderLen+len(reply)+n+len("\r\nEND\r\n") <= protocol.MaxDatagram {
			return n
		}
	}
	return 0
}

func (r *rig) tcHits(t *testing.T) uint64 {
	t.Helper()
	n, err := r.kernel.TCHits()
	if err != nil {
		t.Fatalf("kernel TC hits: %v", err)
	}
	return n
}

// newRig6 is newRig with the server on the veth's IPv6 address.
func newRig6(t *testing.T, admission string) *rig {
	t.Helper()
	testenv.RequireRoot(t)
	pair := newPassPair(t, "xce6")
	return startRig(t, pair, admission, pair.ServerIf, bpf.ModeNative, netip.AddrPortFrom(netns.ServerIPv6, testPort), nil)
}
