package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// udpBatch is how many datagrams ServeUDP reads or writes per system call.
const udpBatch = 32

// maxUDPRequest is the largest request datagram read; memcached reads requests into a 64 KB buffer.
const maxUDPRequest = 65536

// HandleDatagram is the UDP path without a socket: it takes one request datagram (frame header
// included) and returns the reply datagrams, nil for none. Like memcached, it drops requests of
// 8 bytes or less and requests announcing more than one datagram, and answers each request in
// the datagram with its own message of one or more datagrams of at most MaxDatagram bytes. A
// multi-key get is one request, so its reply is one message. A datagram that ends inside a
// storage command's data block gets no reply at all, as memcached gives none.
func (s *Server) HandleDatagram(req []byte) [][]byte {
	c := s.getSession(true)
	defer s.putSession(c)
	return s.handleDatagram(c, req, nil)
}

// handleDatagram appends the reply datagrams for req to dst.
func (s *Server) handleDatagram(c *session, req []byte, dst [][]byte) [][]byte {
	h, err := protocol.ParseFrameHeader(req)
	if err != nil || len(req) <= protocol.FrameHeaderLen || h.Total != 1 {
		s.st.udpDropped.Add(1)
		return dst
	}
	s.st.udpRequests.Add(1)
	s.st.bytesRead.Add(uint64(len(req)))
	c.reset(true)
	_, act := c.process(req[protocol.FrameHeaderLen:])
	if act == actNeedMore && c.need > 0 {
		// The datagram ended inside a data block; memcached sends nothing for it.
		s.st.udpDropped.Add(1)
		return dst
	}
	start := 0
	for _, end := range c.msgEnds {
		if end > start {
			for _, d := range protocol.SplitReply(h.RequestID, c.out[start:end], s.cfg.MaxDatagram) {
				s.st.bytesWritten.Add(uint64(len(d)))
				dst = append(dst, d)
			}
		}
		start = end
	}
	return dst
}

// ServeUDP answers requests on conn until Shutdown, reading and writing batches of datagrams in
// Config.UDPReaders goroutines. Datagrams the UDP guard refuses are counted in Refused: from a
// source not allowed or over its rate they get no reply; a reply over the amplification cap is
// replaced by a short SERVER_ERROR that says to use TCP (see Config.MaxAmplification).
// It returns nil after Shutdown, ErrServerClosed if called after it, or the socket's error, and
// closes conn when it returns, whichever way.
func (s *Server) ServeUDP(conn *net.UDPConn) error {
	if !s.track(func() { s.udpConns[conn] = struct{}{}; s.wg.Add(1) }) {
		_ = conn.Close()
		return ErrServerClosed
	}
	defer func() {
		_ = conn.Close() // before wg.Done: once Shutdown returns, the port is free
		s.mu.Lock()
		delete(s.udpConns, conn)
		s.mu.Unlock()
		s.wg.Done()
	}()
	pc := ipv4.NewPacketConn(conn)
	allow := s.guard.allowFor(conn)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range s.cfg.UDPReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.readUDP(pc, allow); err != nil {
				// The socket failed: close it so that the other readers return too.
				once.Do(func() { first = err; _ = conn.Close() })
			}
		}()
	}
	wg.Wait()
	return first
}

// readUDP is one of ServeUDP's readers: it reads a batch, answers it and writes the replies,
// until the socket closes. It returns nil after Shutdown or when the socket is closed.
func (s *Server) readUDP(pc *ipv4.PacketConn, allow []netip.Prefix) error {
	// Each datagram buffer is 64 KB: readers share the batch, so 16 readers hold 4 MiB, not 32.
	batch := max(4, udpBatch/s.cfg.UDPReaders)
	in := make([]ipv4.Message, batch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, maxUDPRequest)}
	}
	out := make([]ipv4.Message, 0, batch)
	var replies [][]byte
	c := s.getSession(true)
	defer s.putSession(c)
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if s.stopped() {
				return nil
			}
			if isTimeout(err) {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read datagrams: %w", err)
		}
		out = out[:0]
		var now int64
		if s.guard.rate > 0 {
			now = time.Now().UnixNano()
		}
		for i := 0; i < n; i++ {
			m := &in[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok || !s.guard.admit(allow, ua.AddrPort().Addr(), now) {
				continue
			}
			replies = s.handleDatagram(c, m.Buffers[0][:m.N], replies[:0])
			if s.guard.maxAmp > 0 {
				total := 0
				for _, d := range replies {
					total += len(d)
				}
				if !s.guard.fits(m.N, total) {
					// handleDatagram counted these bytes as written; they are not sent.
					s.st.bytesWritten.Add(-uint64(total))
					replies = replies[:0]
					if d := s.guard.tooLarge(m.Buffers[0][:m.N]); d != nil {
						s.st.bytesWritten.Add(uint64(len(d)))
						replies = append(replies, d)
					}
				}
			}
			for _, d := range replies {
				if len(out) == cap(out) {
					if err := writeAll(pc, out); err != nil {
						return err
					}
					out = out[:0]
				}
				out = append(out, ipv4.Message{Buffers: [][]byte{d}, Addr: m.Addr})
			}
		}
		if err := writeAll(pc, out); err != nil {
			return err
		}
		if s.stopped() {
			return nil
		}
	}
}

// writeAll sends every message, retrying the rest after a partial batch. A send error for one
// destination is not the server's failure: it drops that datagram, as UDP may.
func writeAll(pc *ipv4.PacketConn, msgs []ipv4.Message) error {
	for len(msgs) > 0 {
		n, err := pc.WriteBatch(msgs, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			n = max(n, 1)
		}
		msgs = msgs[n:]
	}
	return nil
}
