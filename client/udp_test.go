package client

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

func TestParseReply(t *testing.T) {
	for _, c := range []struct {
		reply  string
		item   *Item
		reason Reason
	}{
		{"END\r\n", nil, ReasonNone},
		{"VALUE k 7 3 99\r\nabc\r\nEND\r\n", &Item{Key: "k", Flags: 7, Value: []byte("abc"), CasID: 99}, ReasonNone},
		{"VALUE k 0 0\r\n\r\nEND\r\n", &Item{Key: "k", Value: []byte{}}, ReasonNone},
		{"VALUE k 0 9 1\r\nab\r\nEND\r\n\r\nEND\r\n", &Item{Key: "k", Value: []byte("ab\r\nEND\r\n"), CasID: 1}, ReasonNone},
		{"SERVER_ERROR out of memory\r\n", nil, ReasonServerError},
		{"ERROR\r\n", nil, ReasonBadReply},
		{"CLIENT_ERROR bad command line format\r\n", nil, ReasonBadReply},
		{"", nil, ReasonBadReply},
		{"END", nil, ReasonBadReply},
		{"END\r\nEND\r\n", nil, ReasonBadReply},
		{"VALUE j 0 3 1\r\nabc\r\nEND\r\n", nil, ReasonBadReply},           // another key
		{"VALUE k 0 3 1\r\nabc\r\n", nil, ReasonBadReply},                  // no END: more messages follow
		{"VALUE k 0 4 1\r\nabc\r\nEND\r\n", nil, ReasonBadReply},           // size larger than the data
		{"VALUE k 0 2 1\r\nabc\r\nEND\r\n", nil, ReasonBadReply},           // smaller
		{"VALUE k x 3 1\r\nabc\r\nEND\r\n", nil, ReasonBadReply},           // flags
		{"VALUE k 0 3 1 2\r\nabc\r\nEND\r\n", nil, ReasonBadReply},         // fields
		{"VALUE k 0 3 -1\r\nabc\r\nEND\r\n", nil, ReasonBadReply},          // cas
		{"VALUE k 4294967296 3\r\nabc\r\nEND\r\n", nil, ReasonBadReply},    // flags over 32 bits
		{"VALUE k 0 99999999999 1\r\nabc\r\nEND\r\n", nil, ReasonBadReply}, // size
		{"VALUE k 0 3 18446744073709551615\r\nabc\r\nEND\r\n", &Item{Key: "k", Value: []byte("abc"), CasID: 1<<64 - 1}, ReasonNone},
		{"VALUE k 0 3 18446744073709551616\r\nabc\r\nEND\r\n", nil, ReasonBadReply}, // cas over 64 bits
		{"VALUE k 4294967295 3\r\nabc\r\nEND\r\n", &Item{Key: "k", Flags: 1<<32 - 1, Value: []byte("abc")}, ReasonNone},
		{"VALUE k  0 3\r\nabc\r\nEND\r\n", nil, ReasonBadReply}, // two spaces
		{"VALUE k 0 3 \r\nabc\r\nEND\r\n", nil, ReasonBadReply}, // trailing space
		{"VALUE k 0 +3\r\nabc\r\nEND\r\n", nil, ReasonBadReply}, // sign
	} {
		it, reason := parseReply([]byte(c.reply), "k")
		if reason != c.reason || (it == nil) != (c.item == nil) ||
			(it != nil && (it.Key != c.item.Key || it.Flags != c.item.Flags || it.CasID != c.item.CasID || !bytes.Equal(it.Value, c.item.Value))) {
			t.Errorf("parseReply(%q) = %+v, %v; want %+v, %v", c.reply, it, reason, c.item, c.reason)
		}
		if it != nil && cap(it.Value) != len(it.Value) {
			t.Errorf("parseReply(%q): value capacity %d beyond its length %d", c.reply, cap(it.Value), len(it.Value))
		}
	}
}

// FuzzParseReply checks that whatever a reply holds, an item comes back only for the key asked
// and exactly as the bytes say.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"END\r\n", "VALUE k 7 3 99\r\nabc\r\nEND\r\n", "SERVER_ERROR x\r\n", "VALUE k 0 0\r\n\r\nEND\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		it, reason := parseReply(reply, "k")
		if it == nil {
			return
		}
		if reason != ReasonNone || it.Key != "k" {
			t.Fatalf("item %+v with reason %v", it, reason)
		}
		want := []byte("VALUE k ")
		if !bytes.HasPrefix(reply, want) || !bytes.HasSuffix(reply, []byte("\r\n" + string(it.Value) + "\r\nEND\r\n")[2:]) {
			t.Fatalf("item %+v from %q", it, reply)
		}
	})
}

// newTestServer is a udpServer without a socket, for feeding datagrams by hand.
func newTestServer(markDSCP int) *udpServer {
	c := NewFromSelector(new(ServerList))
	s := &udpServer{c: c, markTOS: -1, pending: map[uint16]*call{}, retired: map[uint16]time.Time{}}
	if markDSCP > 0 {
		s.markTOS = markDSCP << 2
	}
	return s
}

func tosCmsg(tos byte) []byte {
	b := make([]byte, unix.CmsgSpace(1))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(1))
	b[unix.CmsgLen(0)] = tos
	return b
}

// TestReassembly feeds a reply of many datagrams out of order, with duplicates and strangers,
// and checks the call gets exactly the reply; inconsistent numbering fails the call.
func TestReassembly(t *testing.T) {
	reply := []byte("VALUE k 0 5000 1\r\n" + strings.Repeat("0123456789", 500) + "\r\nEND\r\n")
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 50 {
		s := newTestServer(10)
		r := &request{key: "k", payload: getsRequest("k")}
		cl := s.start(r)
		ds := protocol.SplitReply(cl.id, reply, 300)
		rng.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })
		mid := len(ds) / 2 // a duplicate while the reply is incomplete, and one after
		ds = append(append(append([][]byte{}, ds[:mid]...), ds[0]), append(ds[mid:], ds[1])...)
		stranger := protocol.SplitReply(cl.id+1, []byte("VALUE k 0 1 1\r\nx\r\nEND\r\n"), 300)
		tos := byte(10 << 2)
		if round%2 == 1 {
			tos = 0
		}
		s.mu.Lock()
		s.datagramLocked(stranger[0], tosCmsg(tos))
		for _, d := range ds {
			s.datagramLocked(d, tosCmsg(tos))
		}
		s.mu.Unlock()
		<-cl.done
		s.settle(r, cl)
		if r.reason != ReasonNone || r.item == nil || r.item.Value == nil || string(r.item.Value) != strings.Repeat("0123456789", 500) {
			t.Fatalf("round %d: reason %v item %v", round, r.reason, r.item != nil)
		}
		if got := cl.marked; got != (tos != 0) {
			t.Fatalf("round %d: marked %v with TOS %#x", round, got, tos)
		}
	}

	for _, bad := range []struct {
		name   string
		hdrs   []protocol.FrameHeader
		reason Reason
	}{
		{"total changes", []protocol.FrameHeader{{Seq: 0, Total: 3}, {Seq: 1, Total: 2}}, ReasonBadReply},
		{"seq beyond total", []protocol.FrameHeader{{Seq: 3, Total: 3}}, ReasonBadReply},
		{"total zero", []protocol.FrameHeader{{Seq: 0, Total: 0}}, ReasonBadReply},
		{"too many datagrams", []protocol.FrameHeader{{Seq: 0, Total: 1025}}, ReasonTooLarge},
	} {
		s := newTestServer(0)
		r := &request{key: "k", payload: getsRequest("k")}
		cl := s.start(r)
		s.mu.Lock()
		for _, h := range bad.hdrs {
			h.RequestID = cl.id
			s.datagramLocked(append(h.AppendTo(nil), "xx"...), nil)
		}
		s.mu.Unlock()
		<-cl.done
		s.settle(r, cl)
		if r.reason != bad.reason {
			t.Errorf("%s: reason %v, want %v", bad.name, r.reason, bad.reason)
		}
		if _, ok := s.retired[cl.id]; !ok {
			t.Errorf("%s: the failed call's id is not retired: the rest of its reply may still come", bad.name)
		}
	}
}

// TestRequestIDs checks that ids in flight or given up recently are not reused, and that a
// server with every id taken sends the request over TCP.
func TestRequestIDs(t *testing.T) {
	s := newTestServer(0)
	r := &request{key: "k", payload: getsRequest("k")}
	first := s.start(r)
	if s.abandon(first, true) {
		t.Fatal("abandon: a reply came for a call never answered")
	}
	// The late reply to the abandoned id goes nowhere.
	s.mu.Lock()
	s.datagramLocked(protocol.SplitReply(first.id, []byte("END\r\n"), 0)[0], nil)
	s.mu.Unlock()
	for range 1<<16 - 1 {
		cl := s.start(r)
		if cl == nil {
			t.Fatalf("no id with %d in flight", len(s.pending))
		}
		if cl.id == first.id {
			t.Fatalf("id %d reused while retired", cl.id)
		}
		if got := binary.BigEndian.Uint16(cl.dgram); got != cl.id {
			t.Fatalf("datagram carries id %d, call %d", got, cl.id)
		}
	}
	if cl := s.start(r); cl != nil || r.reason != ReasonNoRequestID {
		t.Fatalf("every id taken: call %v, reason %v", cl, r.reason)
	}
}

func TestTOS(t *testing.T) {
	tclass := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&tclass[0]))
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_TCLASS
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(tclass[unix.CmsgLen(0):], 46<<2|1)
	for _, c := range []struct {
		oob  []byte
		want int
	}{{nil, -1}, {tosCmsg(46 << 2), 46 << 2}, {tclass, 46<<2 | 1}, {tosCmsg(8)[:5], -1}} {
		if got := tosOf(c.oob); got != c.want {
			t.Errorf("tosOf(%x) = %#x, want %#x", c.oob, got, c.want)
		}
	}
}

// blockingConn is a packetConn whose first WriteBatch waits for release, recording the size of
// every batch written; fail makes writes return an error instead.
type blockingConn struct {
	entered, release chan struct{}
	batches          chan int
	fail             bool
}

func (b *blockingConn) ReadBatch([]ipv4.Message, int) (int, error) { select {} }

func (b *blockingConn) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	if b.entered != nil {
		close(b.entered)
		b.entered = nil
		<-b.release
	}
	if b.fail {
		return 0, unix.ECONNREFUSED
	}
	b.batches <- len(ms)
	return len(ms), nil
}

func (s *udpServer) testCall(t *testing.T, key string) *call {
	t.Helper()
	cl := s.start(&request{key: key, payload: []byte("gets " + key + "\r\n")})
	if cl == nil {
		t.Fatal("no request id")
	}
	return cl
}

// TestSendCombines checks that datagrams queued while a goroutine is writing leave together in
// that goroutine's next sendmmsg, and that they are counted.
func TestSendCombines(t *testing.T) {
	pc := &blockingConn{entered: make(chan struct{}), release: make(chan struct{}), batches: make(chan int, 8)}
	s := newTestServer(0)
	s.pc = pc
	entered := pc.entered
	first := s.testCall(t, "a")
	done := make(chan struct{})
	go func() { s.send([]*call{first}); close(done) }()
	<-entered // the first goroutine is the sender and is inside its write
	s.send([]*call{s.testCall(t, "b")})
	s.send([]*call{s.testCall(t, "c"), nil, s.testCall(t, "d")})
	close(pc.release)
	<-done
	if got := []int{<-pc.batches, <-pc.batches}; got[0] != 1 || got[1] != 3 {
		t.Fatalf("batches %v, want [1 3]", got)
	}
	if st := s.c.Stats(); st.UDPSends != 2 || st.UDPDatagrams != 4 {
		t.Fatalf("sends %d datagrams %d, want 2 and 4", st.UDPSends, st.UDPDatagrams)
	}
	// The sender has let go: the next send writes at once.
	s.send([]*call{s.testCall(t, "e")})
	if n := <-pc.batches; n != 1 {
		t.Fatalf("batch of %d, want 1", n)
	}
}

// TestSendFailureSettles checks that a datagram the socket refuses settles its call, whoever
// sent it, as unreachable, and marks the server down.
func TestSendFailureSettles(t *testing.T) {
	pc := &blockingConn{fail: true, batches: make(chan int, 1)}
	s := newTestServer(0)
	s.pc = pc
	a, b := s.testCall(t, "a"), s.testCall(t, "b")
	s.send([]*call{a, b})
	for _, cl := range []*call{a, b} {
		select {
		case <-cl.done:
		default:
			t.Fatalf("call %d not settled", cl.id)
		}
		if cl.reason != ReasonUnreachable {
			t.Fatalf("call %d settled with %v", cl.id, cl.reason)
		}
	}
	if s.downUntil.Load() == 0 || len(s.pending) != 0 {
		t.Fatalf("down until %d, %d pending", s.downUntil.Load(), len(s.pending))
	}
}
