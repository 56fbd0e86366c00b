package loadgen

import (
	"bytes"
	"encoding/binary"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// fakeUDP is a memcached UDP server under the test's control. It answers get and set from a key
// set of its own, marks some hit replies with a DSCP value through IP_TOS on its socket (as the XDP
// program's replies are marked), and can split replies, reorder or duplicate datagrams, drop
// requests, delay replies or answer for the wrong key. It counts what it sent so tests can compare
// the generator's classification with the truth.
type fakeUDP struct {
	conn *net.UDPConn
	v6   bool

	// Behaviour, set before the first request.
	dscp      int                   // mark for kernel replies
	markKey   func(key uint64) bool // which hits go out marked
	hasKey    func(key uint64) bool // keys present before any set (nil: none)
	valueSize int                   // size of values for keys present from the start
	maxDgram  int                   // split replies at this datagram size (0: protocol.MaxDatagram)
	reverse   bool                  // send the datagrams of a reply last first
	duplicate bool                  // send every datagram twice
	drop      func(n uint64) bool   // drop the n-th request (counting from 0)
	dropPart  func(key uint64) bool // lose datagram 1 of a multi-datagram reply for key
	wrongKey  func(key uint64) bool // answer a hit for another key
	delay     time.Duration         // hold every reply this long
	stallAt   uint64                // before handling request number stallAt (from 1), stop for stall
	stall     time.Duration

	mu       sync.Mutex // serialises TOS changes with the send they apply to
	stored   sync.Map   // key index -> value size
	arrivals []int64    // request arrival times, ns since start
	start    time.Time

	n                                       atomic.Uint64
	marked, unmarked, misses, sets, dropped atomic.Uint64
	wrong, partial                          atomic.Uint64
}

func newFakeUDP(t *testing.T, network, addr string) *fakeUDP {
	t.Helper()
	la, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP(network, la)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	// A deep receive queue: a test goroutine starved for a moment on a busy machine must not
	// turn into datagrams lost before the server reads them.
	_ = c.SetReadBuffer(8 << 20)
	f := &fakeUDP{conn: c, v6: network == "udp6", valueSize: 32, start: time.Now()}
	t.Cleanup(func() { c.Close() })
	return f
}

func (f *fakeUDP) addr() string { return f.conn.LocalAddr().String() }

func (f *fakeUDP) serve() {
	// Arrival times come from the kernel (SO_TIMESTAMPNS), so that this goroutine's own scheduling
	// delays do not bunch them.
	rc, err := f.conn.SyscallConn()
	if err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) })
	}
	go func() {
		buf := make([]byte, 64<<10)
		oob := make([]byte, 128)
		for {
			n, oobn, _, from, err := f.conn.ReadMsgUDP(buf, oob)
			if err != nil {
				return // closed by the test's cleanup
			}
			at := time.Now()
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
						sec := int64(binary.NativeEndian.Uint64(m.Data))
						nsec := int64(binary.NativeEndian.Uint64(m.Data[8:]))
						at = time.Unix(sec, nsec)
					}
				}
			}
			f.handle(append([]byte(nil), buf[:n]...), from, at)
		}
	}()
}

func (f *fakeUDP) handle(d []byte, from *net.UDPAddr, at time.Time) {
	i := f.n.Add(1) - 1
	if f.stallAt > 0 && i+1 == f.stallAt {
		time.Sleep(f.stall) // requests queue in the socket meanwhile, as behind a stalled server
	}
	f.mu.Lock()
	f.arrivals = append(f.arrivals, at.Sub(f.start).Nanoseconds())
	f.mu.Unlock()
	h, err := protocol.ParseFrameHeader(d)
	if err != nil {
		return
	}
	if f.drop != nil && f.drop(i) {
		f.dropped.Add(1)
		return
	}
	line, _, ok := protocol.CutLine(d[protocol.FrameHeaderLen:])
	if !ok {
		return
	}
	fields := bytes.Fields(line)
	if len(fields) < 2 {
		return
	}
	key := fields[1]
	idx, _ := strconv.ParseUint(string(key[1:]), 10, 64)
	var reply []byte
	mark := false
	switch string(fields[0]) {
	case "set":
		size, _ := strconv.Atoi(string(fields[4]))
		f.stored.Store(idx, size)
		f.sets.Add(1)
		reply = []byte("STORED\r\n")
	case "get":
		size, found := f.lookup(idx)
		if !found {
			f.misses.Add(1)
			reply = []byte(protocol.End)
			break
		}
		if f.wrongKey != nil && f.wrongKey(idx) {
			f.wrong.Add(1)
			key = append([]byte{'x'}, key[1:]...)
		}
		reply = protocol.AppendValue(nil, string(key), 0, bytes.Repeat([]byte{'v'}, size), 0, false)
		reply = append(reply, protocol.End...)
		mark = f.markKey != nil && f.markKey(idx)
		if mark {
			f.marked.Add(1)
		} else {
			f.unmarked.Add(1)
		}
	default:
		reply = []byte("ERROR\r\n")
	}
	send := func() {
		parts := protocol.SplitReply(h.RequestID, reply, f.maxDgram)
		if f.reverse {
			for l, r := 0, len(parts)-1; l < r; l, r = l+1, r-1 {
				parts[l], parts[r] = parts[r], parts[l]
			}
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		tos := 0
		if mark {
			tos = f.dscp << 2
		}
		f.setTOS(tos)
		if len(parts) > 1 && f.dropPart != nil && f.dropPart(idx) {
			f.partial.Add(1)
			parts = append(parts[:1:1], parts[2:]...)
		}
		for _, p := range parts {
			_, _ = f.conn.WriteToUDP(p, from)
			if f.duplicate {
				_, _ = f.conn.WriteToUDP(p, from)
			}
		}
	}
	if f.delay > 0 {
		time.AfterFunc(f.delay, send)
		return
	}
	send()
}

func (f *fakeUDP) lookup(idx uint64) (int, bool) {
	if v, ok := f.stored.Load(idx); ok {
		return v.(int), true
	}
	if f.hasKey != nil && f.hasKey(idx) {
		return f.valueSize, true
	}
	return 0, false
}

func (f *fakeUDP) setTOS(tos int) {
	rc, err := f.conn.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if f.v6 {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tos)
		} else {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tos)
		}
	})
}

func (f *fakeUDP) arrivalTimes() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.arrivals...)
}
