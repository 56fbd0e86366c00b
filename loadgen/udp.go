package loadgen

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/loadgen/workload"
)

// batchConn is what ipv4.PacketConn and ipv6.PacketConn have in common for sending: sendmmsg.
// Both use the same Message type.
type batchConn interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// udpSlot is one outstanding UDP request, indexed by its request id.
type udpSlot struct {
	seq      uint64 // send sequence number; 0 means free
	intended int64
	sent     int64
	key      uint64
	kind     opKind
	total    uint16 // datagrams in the reply, from the first one seen
	got      uint16 // distinct datagrams received
	class    Class
	headSeen bool // datagram 0 (the one that says what the reply is) arrived
	bad      bool // malformed or inconsistent reply
	bytes    int  // payload bytes received
	want     int  // payload bytes the reply must have, from datagram 0
	seen     uint64
	seenMore []uint64 // bitmap for datagrams 64 and up of a large reply
}

type fifoEntry struct {
	id  uint16
	seq uint64
}

// udpTransport speaks memcached's UDP protocol on one connected socket: each request carries an
// 8-byte frame header whose request id the server echoes; replies may span several datagrams.
type udpTransport struct {
	w    *worker
	conn *net.UDPConn
	bc   batchConn
	ks   *workload.KeySpace
	val  valueSource

	mu      sync.Mutex
	slots   []udpSlot
	mask    uint16
	nextID  uint16
	seq     uint64
	fifo    []fifoEntry // outstanding requests in send order, for timeouts; may hold finished ones
	fifoHd  int
	pending int

	// Sender-owned.
	wmsgs []ipv4.Message
	wbufs [][]byte
	// Receiving: by the receiver goroutine, or by the sender between sends; recvMu serialises
	// them and guards these fields and the measurement.
	recvMu  sync.Mutex
	rb      *recvBatch
	done    []completion
	keyBuf  []byte
	lastSwp int64

	epochUnixNs int64 // the control's epoch on the wall clock, to convert kernel timestamps
	echo        bool  // Config.EchoReplies
}

type completion struct {
	class    Class
	intended int64
	at       int64 // when the last datagram arrived, ns since the epoch
	ok       bool
}

// sweepEvery is how often outstanding requests are checked against the timeout (and the longest a
// receiver waits before checking). Replies to requests already given up are dropped silently:
// they are expected after timeouts.
const sweepEvery = 5 * time.Millisecond

func newUDPTransport(w *worker, conn *net.UDPConn, ks *workload.KeySpace, val valueSource, inflight int) (*udpTransport, error) {
	t := &udpTransport{w: w, conn: conn, ks: ks, val: val}
	v6 := false
	if ra, ok := conn.RemoteAddr().(*net.UDPAddr); ok && ra.IP.To4() == nil {
		v6 = true
	}
	// x/net/ipv4 has no TOS control message flag, so the socket option is set directly and the
	// control message parsed by parseCmsgs.
	level, opt := unix.IPPROTO_IP, unix.IP_RECVTOS
	t.bc = ipv4.NewPacketConn(conn)
	if v6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS
		t.bc = ipv6.NewPacketConn(conn)
	}
	if err := setsockoptInt(conn, level, opt, 1); err != nil {
		return nil, fmt.Errorf("enable receiving the TOS byte: %w", err)
	}
	// Kernel receive timestamps end each latency when the reply arrived, not when the receiving
	// goroutine got to it, so the generator's own scheduling delays stay out of the figures.
	if err := setsockoptInt(conn, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return nil, fmt.Errorf("enable receive timestamps: %w", err)
	}
	t.epochUnixNs = w.ctl.epoch.UnixNano()
	rb, err := newRecvBatch(conn, w.batch, 64<<10)
	if err != nil {
		return nil, err
	}
	t.rb = rb
	// Request ids are 16 bits; a smaller table keeps the slots in cache when little is in flight.
	n := 1 << bits.Len(uint(max(1024, 4*inflight)-1))
	n = min(n, 1<<16)
	t.slots = make([]udpSlot, n)
	t.mask = uint16(n - 1)
	batch := w.batch
	t.wmsgs = make([]ipv4.Message, batch)
	t.wbufs = make([][]byte, batch)
	for i := range t.wbufs {
		t.wbufs[i] = make([]byte, 0, 128)
	}
	// Bursts of replies must not overflow the receive buffer; best effort.
	_ = conn.SetReadBuffer(4 << 20)
	_ = conn.SetWriteBuffer(4 << 20)
	return t, nil
}

func (t *udpTransport) send(ops []op, now int64) error {
	t.mu.Lock()
	for i := range ops {
		id := t.allocLocked(now)
		s := &t.slots[id]
		t.seq++
		*s = udpSlot{seq: t.seq, intended: ops[i].intended, sent: now, key: ops[i].key, kind: ops[i].kind, seenMore: s.seenMore[:0]}
		t.fifo = append(t.fifo, fifoEntry{id: id, seq: t.seq})
		t.pending++
		b := protocol.FrameHeader{RequestID: id, Total: 1}.AppendTo(t.wbufs[i][:0])
		t.wbufs[i] = appendRequest(b, &ops[i], t.ks, t.val)
		t.wmsgs[i].Buffers = t.wbufs[i : i+1]
		t.wmsgs[i].Addr = nil
	}
	t.mu.Unlock()
	msgs := t.wmsgs[:len(ops)]
	for len(msgs) > 0 {
		n, err := t.bc.WriteBatch(msgs, 0)
		if err == nil {
			msgs = msgs[n:]
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		// One failed datagram (typically ECONNREFUSED from an earlier ICMP port unreachable)
		// fails that request only.
		t.failSent(msgs[max(n, 0)])
		msgs = msgs[max(n, 0)+1:]
	}
	return nil
}

// allocLocked picks a free request id. If the next few are all taken (the table is sized for four
// times the expected requests in flight), the oldest of them is given up as a timeout.
func (t *udpTransport) allocLocked(now int64) uint16 {
	for range 8 {
		id := t.nextID & t.mask
		t.nextID++
		if t.slots[id].seq == 0 {
			return id
		}
	}
	id := t.nextID & t.mask
	t.nextID++
	s := &t.slots[id]
	t.pending--
	s.seq = 0
	t.w.timeout(s.intended)
	return id
}

func (t *udpTransport) failSent(m ipv4.Message) {
	h, err := protocol.ParseFrameHeader(m.Buffers[0])
	if err != nil {
		return
	}
	t.mu.Lock()
	s := &t.slots[h.RequestID&t.mask]
	intended, live := s.intended, s.seq != 0
	if live {
		s.seq = 0
		t.pending--
	}
	t.mu.Unlock()
	if live {
		t.w.fail(intended)
	}
}

func (t *udpTransport) receive() error {
	for {
		if err := t.conn.SetReadDeadline(time.Now().Add(sweepEvery)); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("set read deadline: %w", err)
		}
		full := false
		err := t.rb.wait(&t.recvMu, func(n int) {
			t.handle(n, t.w.ctl.now())
			full = n == len(t.rb.hdrs)
		})
		var ne net.Error
		switch {
		case err == nil:
		case errors.Is(err, net.ErrClosed):
			return nil
		case errors.As(err, &ne) && ne.Timeout():
		case errors.Is(err, syscall.ECONNREFUSED):
			// The server's port is closed; requests time out and are counted then.
		default:
			return fmt.Errorf("read replies: %w", err)
		}
		t.maybeSweep(!full)
	}
}

// poll is the sender's share of receiving: it drains replies already queued. With a single P a
// sender that never blocks would otherwise leave the receiver waiting for the netpoller, which a
// busy scheduler consults only every few milliseconds.
func (t *udpTransport) poll() {
	if !t.recvMu.TryLock() {
		return // the receiver is at it
	}
	defer t.recvMu.Unlock()
	_ = t.rb.drain(4, func(n int) { t.handle(n, t.w.ctl.now()) }) // errors surface in receive
}

// maybeSweep sweeps once the socket is drained, so that replies already queued are read before
// their requests are given up; under a flood that never drains, it sweeps less often anyway.
func (t *udpTransport) maybeSweep(drained bool) {
	t.recvMu.Lock()
	defer t.recvMu.Unlock()
	now := t.w.ctl.now()
	since := now - t.lastSwp
	if (drained && since >= int64(sweepEvery)) || since >= int64(20*sweepEvery) {
		t.sweep(now)
	}
}

// handle matches n received datagrams to their requests and records the finished ones. The
// caller holds recvMu.
func (t *udpTransport) handle(n int, now int64) {
	t.done = t.done[:0]
	t.mu.Lock()
	for i := range n {
		d, oob := t.rb.datagram(i)
		tos, rx := parseCmsgs(oob)
		at := now
		if rx != 0 {
			at = min(rx-t.epochUnixNs, now)
		}
		t.datagramLocked(d, tos, at)
	}
	t.mu.Unlock()
	for _, c := range t.done {
		if c.ok {
			t.w.complete(c.class, c.intended, c.at)
		} else {
			t.w.fail(c.intended)
		}
	}
}

func (t *udpTransport) datagramLocked(d []byte, tos int, at int64) {
	h, err := protocol.ParseFrameHeader(d)
	if err != nil {
		return // not memcached's framing: nothing to match it to
	}
	if h.RequestID > t.mask {
		return
	}
	s := &t.slots[h.RequestID]
	if s.seq == 0 {
		return // a late reply to a request already timed out
	}
	payload := d[protocol.FrameHeaderLen:]
	if s.total == 0 {
		s.total = h.Total
	}
	if h.Total == 0 || h.Total != s.total || h.Seq >= h.Total {
		s.bad = true
		t.finishLocked(s, at)
		return
	}
	if !s.markSeen(h.Seq) {
		return // duplicate datagram
	}
	s.got++
	s.bytes += len(payload)
	if h.Seq == 0 {
		s.headSeen = true
		t.classifyLocked(s, payload, tos)
	}
	if s.got == s.total {
		if s.bytes != s.want {
			s.bad = true
		}
		t.finishLocked(s, at)
	}
}

func (s *udpSlot) markSeen(seq uint16) bool {
	if seq < 64 {
		bit := uint64(1) << seq
		if s.seen&bit != 0 {
			return false
		}
		s.seen |= bit
		return true
	}
	i := int(seq-64) / 64
	for len(s.seenMore) <= i {
		s.seenMore = append(s.seenMore, 0)
	}
	bit := uint64(1) << ((seq - 64) % 64)
	if s.seenMore[i]&bit != 0 {
		return false
	}
	s.seenMore[i] |= bit
	return true
}

// classifyLocked reads the first datagram of a reply: what it is, whether it answers the request
// that was sent, and how long the whole reply must be.
func (t *udpTransport) classifyLocked(s *udpSlot, p []byte, tos int) {
	kernel := t.w.ctl.kernelTOS >= 0 && tos >= 0 && tos&^3 == t.w.ctl.kernelTOS
	switch {
	case s.kind == opGet && bytes.HasPrefix(p, []byte("VALUE ")):
		line, _, ok := protocol.CutLine(p)
		if !ok {
			s.bad = true
			return
		}
		v, ok := protocol.ParseValueLine(line)
		t.keyBuf = t.ks.Append(t.keyBuf[:0], s.key)
		if !ok || !bytes.Equal(v.Key, t.keyBuf) {
			s.bad = true
			return
		}
		s.want = len(line) + 2 + v.Size + 2 + len(protocol.End)
		s.class = UserHit
		if kernel {
			s.class = KernelHit
		}
	case s.kind == opGet && bytes.HasPrefix(p, []byte(protocol.End)):
		s.want = len(protocol.End)
		s.class = UserMiss
	case s.kind == opSet && bytes.HasPrefix(p, []byte("STORED\r\n")):
		s.want = len("STORED\r\n")
		s.class = Set
	case t.echo && s.kind == opGet && bytes.HasPrefix(p, []byte("get ")):
		s.want = len(p)
		s.class = KernelHit
	default:
		s.bad = true
	}
}

func (t *udpTransport) finishLocked(s *udpSlot, at int64) {
	// A wall-clock step could put the kernel timestamp before the send; never report less than
	// the time since the actual send.
	at = max(at, s.sent)
	t.done = append(t.done, completion{class: s.class, intended: s.intended, at: at, ok: !s.bad && s.headSeen})
	s.seq = 0
	t.pending--
}

// sweep gives up on requests unanswered for longer than the timeout.
func (t *udpTransport) sweep(now int64) {
	t.lastSwp = now
	var expired []int64
	t.mu.Lock()
	for t.fifoHd < len(t.fifo) {
		e := t.fifo[t.fifoHd]
		s := &t.slots[e.id]
		if s.seq == e.seq {
			if now-s.sent < t.w.ctl.timeoutNs {
				break
			}
			expired = append(expired, s.intended)
			s.seq = 0
			t.pending--
		}
		t.fifoHd++
	}
	// Reclaim the consumed front of the queue once it is half the slice.
	if t.fifoHd > 1024 && t.fifoHd*2 > len(t.fifo) {
		t.fifo = t.fifo[:copy(t.fifo, t.fifo[t.fifoHd:])]
		t.fifoHd = 0
	}
	t.mu.Unlock()
	for _, in := range expired {
		t.w.timeout(in)
	}
}

func (t *udpTransport) outstanding() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pending
}

func (t *udpTransport) expireAll() {
	var expired []int64
	t.mu.Lock()
	for i := range t.slots {
		if s := &t.slots[i]; s.seq != 0 {
			expired = append(expired, s.intended)
			s.seq = 0
		}
	}
	t.pending = 0
	t.fifo, t.fifoHd = t.fifo[:0], 0
	t.mu.Unlock()
	for _, in := range expired {
		t.w.timeout(in)
	}
}

func (t *udpTransport) close() error {
	if err := t.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close UDP socket: %w", err)
	}
	return nil
}

// parseCmsgs finds the IPv4 TOS or IPv6 traffic class (-1 if absent) and the kernel receive
// timestamp in Unix ns (0 if absent) in received control messages. It reads the cmsghdr layout
// directly because the x/net and x/sys parsers allocate on every call.
func parseCmsgs(oob []byte) (tos int, rxUnixNs int64) {
	tos = -1
	hdr := unix.CmsgLen(0)
	for len(oob) >= hdr {
		var l int
		if unix.SizeofPtr == 8 {
			l = int(binary.NativeEndian.Uint64(oob))
		} else {
			l = int(binary.NativeEndian.Uint32(oob))
		}
		level := int32(binary.NativeEndian.Uint32(oob[unix.SizeofPtr:]))
		typ := int32(binary.NativeEndian.Uint32(oob[unix.SizeofPtr+4:]))
		if l < hdr || l > len(oob) {
			return tos, rxUnixNs
		}
		data := oob[hdr:l]
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_TOS && len(data) >= 1:
			tos = int(data[0])
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_TCLASS && len(data) >= 4:
			tos = int(binary.NativeEndian.Uint32(data)) & 0xff
		case level == unix.SOL_SOCKET && typ == unix.SCM_TIMESTAMPNS && len(data) >= 2*unix.SizeofPtr:
			var sec, nsec int64
			if unix.SizeofPtr == 8 {
				sec, nsec = int64(binary.NativeEndian.Uint64(data)), int64(binary.NativeEndian.Uint64(data[8:]))
			} else {
				sec, nsec = int64(int32(binary.NativeEndian.Uint32(data))), int64(binary.NativeEndian.Uint32(data[4:]))
			}
			rxUnixNs = sec*1e9 + nsec
		}
		next := unix.CmsgSpace(l - hdr)
		if next > len(oob) {
			return tos, rxUnixNs
		}
		oob = oob[next:]
	}
	return tos, rxUnixNs
}

func setsockoptInt(conn *net.UDPConn, level, opt, v int) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("get raw socket: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return fmt.Errorf("reach raw socket: %w", err)
	}
	return serr
}
