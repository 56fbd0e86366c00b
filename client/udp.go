package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

const (
	// readBatch is how many datagrams a server's reader takes per recvmmsg.
	readBatch = 16
	// maxReadDatagram is the largest reply datagram read whole; memcached's are 1400 bytes, a
	// jumbo frame's payload is below this. A longer one is dropped, and its request times out.
	maxReadDatagram = 9216
	// retireFor keeps the id of a request given up unused this long, so that its late reply
	// cannot be taken for another request's.
	retireFor = 2 * time.Second
	// downAfter requests in a row that time out over UDP while not one datagram comes back from
	// the server, or one unreachable port, send the server's gets over TCP for downFor before
	// UDP is tried again. A lossy path, where some replies arrive, is not down.
	downAfter = 3
	downFor   = time.Second
	// dialTimeout bounds opening a UDP socket (name resolution included).
	dialTimeout = time.Second
)

// request is one `gets` of one key and, once done, its result.
type request struct {
	key     string
	payload []byte // "gets key\r\n"

	item   *Item  // nil: a miss
	reason Reason // ReasonNone: answered over UDP
}

// call is one UDP attempt of a request: the datagram sent and the reply reassembled.
type call struct {
	id    uint16
	dgram []byte // frame header and payload
	done  chan struct{}

	// Written by the reader under udpServer.mu until done is signalled.
	total  uint16
	got    uint16
	parts  [][]byte
	reply  []byte
	marked bool // every datagram carried the kernel mark
	reason Reason
}

// packetConn is what ipv4.PacketConn and ipv6.PacketConn share: recvmmsg and sendmmsg, with the
// same Message type.
type packetConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// udpServer is the UDP side of one server: a connected socket, so that the kernel drops
// datagrams from anyone else and reports an unreachable port; the requests in flight by id; and a
// goroutine reading replies.
type udpServer struct {
	c       *Client
	conn    *net.UDPConn
	pc      packetConn
	markTOS int // the DSCP mark in the TOS byte's position; -1: not looked for

	mu      sync.Mutex
	pending map[uint16]*call
	retired map[uint16]time.Time // ids of requests given up, until when they stay unused
	nextID  uint16
	streak  int // requests in a row that fell back after timeouts with nothing received

	sendMu  sync.Mutex
	sendQ   []*call // datagrams waiting for the sender
	sending bool    // a goroutine is writing sendQ

	lastRx    atomic.Int64 // unix ns when the reader last got datagrams
	downUntil atomic.Int64 // unix ns; UDP is not tried before
}

// server returns the UDP side of the server at addr, opening it on first use, or why there is
// none to use now.
func (c *Client) server(addr net.Addr) (*udpServer, Reason) {
	key := addr.String()
	c.mu.RLock()
	s := c.servers[key]
	c.mu.RUnlock()
	if s == nil {
		if addr.Network() != "tcp" {
			return nil, ReasonNoUDP
		}
		c.mu.Lock()
		if s = c.servers[key]; s == nil {
			var err error
			if s, err = c.openServer(key); err != nil {
				c.mu.Unlock()
				return nil, ReasonUnreachable
			}
			c.servers[key] = s
		}
		c.mu.Unlock()
	}
	if d := s.downUntil.Load(); d != 0 && time.Now().UnixNano() < d {
		return nil, ReasonDown
	}
	return s, ReasonNone
}

// openServer opens the UDP socket of the server whose TCP address is tcpAddr and starts its reader.
func (c *Client) openServer(tcpAddr string) (*udpServer, error) {
	host, port, err := net.SplitHostPort(tcpAddr)
	if err != nil {
		return nil, fmt.Errorf("split address %s: %w", tcpAddr, err)
	}
	if c.UDPPort > 0 {
		port = strconv.Itoa(c.UDPPort)
	}
	network := "udp4"
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		network = "udp6"
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	var conn *net.UDPConn
	address := net.JoinHostPort(host, port)
	if c.DialUDP != nil {
		conn, err = c.DialUDP(ctx, network, address)
	} else {
		var nc net.Conn
		if nc, err = new(net.Dialer).DialContext(ctx, network, address); err == nil {
			conn = nc.(*net.UDPConn)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open UDP socket to %s: %w", address, err)
	}
	s := &udpServer{c: c, conn: conn, markTOS: -1, pending: make(map[uint16]*call),
		retired: make(map[uint16]time.Time)}
	level, opt := unix.IPPROTO_IP, unix.IP_RECVTOS
	if network == "udp4" {
		s.pc = ipv4.NewPacketConn(conn)
	} else {
		s.pc = ipv6.NewPacketConn(conn)
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS
	}
	if c.KernelDSCP > 0 {
		// x/net's control messages carry no IPv4 TOS: the option is set here and the control
		// message read by tosOf.
		if err := setsockoptInt(conn, level, opt, 1); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("enable receiving the TOS byte: %w", err)
		}
		s.markTOS = (c.KernelDSCP & 0x3f) << 2
	}
	_ = conn.SetReadBuffer(1 << 20) // room for large multi-datagram replies; best effort
	go s.read()
	return s, nil
}

func setsockoptInt(conn *net.UDPConn, level, opt, v int) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}

func (s *udpServer) close() { _ = s.conn.Close() }

// udpRequests sends reqs to the server at addr over UDP and waits for their replies, with
// retries; each request ends with its items, or with the reason it must go over TCP.
func (c *Client) udpRequests(addr net.Addr, reqs []*request) {
	s, calls := c.sendUDP(addr, reqs)
	c.awaitUDP(s, reqs, calls)
}

// sendUDP sends the first attempt of each request in one batch and returns the server and the
// calls. A nil server or call means the request already has its reason to go over TCP.
func (c *Client) sendUDP(addr net.Addr, reqs []*request) (*udpServer, []*call) {
	s, reason := c.server(addr)
	calls := make([]*call, len(reqs))
	if s == nil {
		for _, r := range reqs {
			r.reason = reason
		}
		return nil, calls
	}
	for i, r := range reqs {
		calls[i] = s.start(r)
	}
	s.send(calls)
	return s, calls
}

// awaitUDP waits for the calls of reqs, sends again those that time out while retries last,
// and settles every request.
func (c *Client) awaitUDP(s *udpServer, reqs []*request, calls []*call) {
	if s == nil {
		return
	}
	retries := c.udpRetries()
	start := time.Now().UnixNano()
	for attempt := 0; ; attempt++ {
		timedOut := s.wait(reqs, calls, c.udpTimeout())
		if timedOut == 0 {
			return
		}
		c.ctr.timeouts.Add(uint64(timedOut))
		if attempt == retries {
			for i, r := range reqs {
				if calls[i] != nil {
					calls[i] = nil
					r.reason = ReasonTimeout
					s.timedOut(start)
				}
			}
			return
		}
		c.ctr.retries.Add(uint64(timedOut))
		for i, r := range reqs {
			if calls[i] != nil {
				calls[i] = s.start(r)
			}
		}
		s.send(calls)
	}
}

// start registers a new attempt of r under a fresh request id. A nil call means the request
// has its reason to go over TCP.
func (s *udpServer) start(r *request) *call {
	s.mu.Lock()
	id, ok := s.allocLocked()
	if !ok {
		s.mu.Unlock()
		r.reason = ReasonNoRequestID
		return nil
	}
	cl := &call{id: id, done: make(chan struct{}, 1)}
	s.pending[id] = cl
	s.mu.Unlock()
	cl.dgram = make([]byte, 0, protocol.FrameHeaderLen+len(r.payload))
	cl.dgram = protocol.FrameHeader{RequestID: id, Total: 1}.AppendTo(cl.dgram)
	cl.dgram = append(cl.dgram, r.payload...)
	return cl
}

// allocLocked picks the next request id neither in flight nor recently given up.
func (s *udpServer) allocLocked() (uint16, bool) {
	if len(s.pending)+len(s.retired) >= 1<<16 {
		return 0, false
	}
	var now time.Time
	for range 1 << 16 {
		id := s.nextID
		s.nextID++
		if _, busy := s.pending[id]; busy {
			continue
		}
		if until, ok := s.retired[id]; ok {
			if now.IsZero() {
				now = time.Now()
			}
			if now.Before(until) {
				continue
			}
			delete(s.retired, id)
		}
		return id, true
	}
	return 0, false
}

// send queues the datagrams of the calls not yet settled for the socket's next sendmmsg. The
// goroutine that finds the queue idle becomes its sender: it yields once, so that goroutines
// ready to run alongside it (those woken by one batch of replies) queue their datagrams too, then
// writes whatever is queued, in as few system calls as the kernel takes, until the queue is
// empty. An idle client pays one yield that returns at once; a busy one sends many gets per
// system call, and the kernel starts packet processing once per burst rather than once per
// datagram. A call whose datagram cannot be sent is settled as unreachable.
func (s *udpServer) send(calls []*call) {
	s.sendMu.Lock()
	idle := !s.sending
	for _, cl := range calls {
		if cl != nil && cl.dgram != nil {
			s.sendQ = append(s.sendQ, cl)
		}
	}
	if !idle || len(s.sendQ) == 0 {
		s.sendMu.Unlock()
		return
	}
	s.sending = true
	s.sendMu.Unlock()
	runtime.Gosched()
	var batch []*call
	var msgs []ipv4.Message
	for {
		s.sendMu.Lock()
		batch, s.sendQ = s.sendQ, batch[:0]
		if len(batch) == 0 {
			s.sending = false
			s.sendMu.Unlock()
			return
		}
		s.sendMu.Unlock()
		msgs = msgs[:0]
		for _, cl := range batch {
			msgs = append(msgs, ipv4.Message{Buffers: [][]byte{cl.dgram}})
		}
		s.writeBatch(batch, msgs)
		clear(batch) // the calls belong to their waiters once sent
	}
}

// writeBatch writes msgs, the datagrams of calls, and settles as unreachable the calls the socket
// refused.
func (s *udpServer) writeBatch(calls []*call, msgs []ipv4.Message) {
	for sent := 0; sent < len(msgs); {
		n, err := s.pc.WriteBatch(msgs[sent:], 0)
		if n > 0 {
			s.c.ctr.sends.Add(1)
			s.c.ctr.datagrams.Add(uint64(n))
		}
		if err != nil {
			s.mu.Lock()
			for _, cl := range calls[sent:] {
				if s.pending[cl.id] == cl {
					s.finishLocked(cl, ReasonUnreachable)
				}
			}
			s.mu.Unlock()
			s.markDown()
			return
		}
		sent += n
	}
}

// wait waits up to timeout for the calls, settles the requests of those answered, and returns
// how many timed out; those keep their call, abandoned, for a new attempt.
func (s *udpServer) wait(reqs []*request, calls []*call, timeout time.Duration) (timedOut int) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	expired := false
	for i, cl := range calls {
		if cl == nil {
			continue
		}
		answered := false
		if !expired {
			select {
			case <-cl.done:
				answered = true
			case <-timer.C:
				expired = true
			}
		}
		if !answered {
			answered = s.abandon(cl, true)
		}
		if !answered {
			timedOut++
			continue
		}
		calls[i] = nil
		s.settle(reqs[i], cl)
	}
	return timedOut
}

// abandon takes cl out of flight. It returns true if its reply came in the meantime; otherwise
// the id is retired when retire is set (its reply may still come, late).
func (s *udpServer) abandon(cl *call, retire bool) bool {
	s.mu.Lock()
	if s.pending[cl.id] == cl {
		delete(s.pending, cl.id)
		if retire {
			s.retired[cl.id] = time.Now().Add(retireFor)
		}
		s.mu.Unlock()
		return false
	}
	s.mu.Unlock()
	<-cl.done // settled by the reader, which signals in the same critical section
	return true
}

// settle turns a finished call into r's items, or its reason to go over TCP.
func (s *udpServer) settle(r *request, cl *call) {
	if cl.reason != ReasonNone {
		r.reason = cl.reason
		return
	}
	r.item, r.reason = parseReply(cl.reply, r.key)
	if r.reason != ReasonNone {
		return
	}
	s.c.ctr.udpGets.Add(1)
	if cl.marked {
		s.c.ctr.kernelReplies.Add(1)
	}
	s.mu.Lock()
	s.streak = 0
	s.mu.Unlock()
}

// timedOut records a request, started at start (unix ns), that goes over TCP after its UDP
// attempts timed out.
func (s *udpServer) timedOut(start int64) {
	s.mu.Lock()
	if s.lastRx.Load() >= start {
		s.streak = 0 // the server's datagrams arrive: the path loses some, it is not down
		s.mu.Unlock()
		return
	}
	s.streak++
	down := s.streak >= downAfter
	if down {
		s.streak = 0
	}
	s.mu.Unlock()
	if down {
		s.markDown()
	}
}

func (s *udpServer) markDown() { s.downUntil.Store(time.Now().Add(downFor).UnixNano()) }

// read takes reply datagrams off the socket and hands each to its call until the socket closes.
func (s *udpServer) read() {
	msgs := make([]ipv4.Message, readBatch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, maxReadDatagram)}
		if s.markTOS >= 0 {
			msgs[i].OOB = make([]byte, unix.CmsgSpace(4))
		}
	}
	for {
		n, err := s.pc.ReadBatch(msgs, 0)
		if err != nil {
			// An ICMP error on the connected socket (port unreachable, no route) fails what is in
			// flight at once rather than by timeout; anything else, a closed socket included, ends
			// the reader, and the server is opened again on next use.
			s.failAll(ReasonUnreachable)
			s.markDown()
			if icmpError(err) {
				continue
			}
			s.c.forget(s)
			_ = s.conn.Close()
			s.failAll(ReasonUnreachable) // requests that started while closing
			return
		}
		s.lastRx.Store(time.Now().UnixNano())
		s.mu.Lock()
		for i := range n {
			m := &msgs[i]
			if m.Flags&unix.MSG_TRUNC != 0 {
				continue
			}
			s.datagramLocked(m.Buffers[0][:m.N], m.OOB[:m.NN])
		}
		s.mu.Unlock()
	}
}

func icmpError(err error) bool {
	for _, e := range []syscall.Errno{unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EHOSTDOWN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// forget drops s from the client's servers if it is still there.
func (c *Client) forget(s *udpServer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.servers {
		if v == s {
			delete(c.servers, k)
		}
	}
}

// datagramLocked adds one reply datagram to its call. Datagrams of no call in flight (late
// replies to requests given up, strangers) are dropped.
func (s *udpServer) datagramLocked(d, oob []byte) {
	h, err := protocol.ParseFrameHeader(d)
	if err != nil {
		return
	}
	cl := s.pending[h.RequestID]
	if cl == nil {
		return
	}
	switch {
	case h.Total == 0 || h.Seq >= h.Total || (cl.total != 0 && h.Total != cl.total):
		s.finishLocked(cl, ReasonBadReply)
		return
	case int(h.Total) > s.c.maxReplyDatagrams:
		s.finishLocked(cl, ReasonTooLarge)
		return
	}
	marked := s.markTOS >= 0 && tosOf(oob)&^3 == s.markTOS
	payload := d[protocol.FrameHeaderLen:]
	if h.Total == 1 {
		cl.reply = append(make([]byte, 0, len(payload)), payload...)
		cl.marked = marked
		s.finishLocked(cl, ReasonNone)
		return
	}
	if cl.total == 0 {
		cl.total = h.Total
		cl.parts = make([][]byte, h.Total)
		cl.marked = true
	}
	if cl.parts[h.Seq] != nil {
		return // a duplicate
	}
	cl.parts[h.Seq] = append(make([]byte, 0, len(payload)), payload...)
	cl.marked = cl.marked && marked
	cl.got++
	if cl.got < cl.total {
		return
	}
	size := 0
	for _, p := range cl.parts {
		size += len(p)
	}
	cl.reply = make([]byte, 0, size)
	for _, p := range cl.parts {
		cl.reply = append(cl.reply, p...)
	}
	cl.parts = nil
	s.finishLocked(cl, ReasonNone)
}

// finishLocked settles cl and wakes its waiter. A call that failed may still have datagrams on
// the way: its id is retired like a timed-out one's.
func (s *udpServer) finishLocked(cl *call, r Reason) {
	delete(s.pending, cl.id)
	if r != ReasonNone {
		s.retired[cl.id] = time.Now().Add(retireFor)
	}
	cl.reason = r
	cl.done <- struct{}{}
}

// failAll settles every call in flight with reason r.
func (s *udpServer) failAll(r Reason) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cl := range s.pending {
		s.finishLocked(cl, r)
	}
}

// tosOf returns the TOS byte (IPv4) or traffic class (IPv6) from a datagram's control
// messages, -1 when there is none.
func tosOf(oob []byte) int {
	if len(oob) == 0 {
		return -1
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) >= 1:
			return int(m.Data[0])
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_TCLASS && len(m.Data) >= 4:
			return int(binary.NativeEndian.Uint32(m.Data)) & 0xff
		}
	}
	return -1
}
