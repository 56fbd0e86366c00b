package server

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// Read buffer sizes: connections start small and grow only for large values or multi-key gets.
const (
	readBufSize    = 16 << 10
	maxIdleReadBuf = 64 << 10
)

// tooManyConns is what memcached writes to a connection over the limit before closing it.
const tooManyConns = "ERROR Too many open connections\r\n"

// outOfMemoryReading is memcached's reply when it cannot buffer a request.
const outOfMemoryReading = "SERVER_ERROR out of memory reading request\r\n"

// DefaultWriteTimeout is how long a client may leave a reply untaken before its connection is
// closed. memcached has no such limit, but then it never blocks a thread on one client: here a
// client that stops reading holds a goroutine, up to one flush of replies (256 KiB plus an item)
// and a connection slot; 30 s is far longer than any live client pauses, and short enough that
// a few hundred such clients cannot hold -c for long.
const DefaultWriteTimeout = 30 * time.Second

// Reasons a connection is closed by the server, for xdpcache_tcp_closed_total.
const (
	closeIdle = iota
	closeWriteTimeout
	closeReadBuffer
	numCloseReasons
)

var closeNames = [numCloseReasons]string{"idle", "write_timeout", "read_buffer"}

// tcpLimits is the server-wide accounting against hostile TCP clients.
type tcpLimits struct {
	// readBufs is the bytes of read buffers grown past readBufSize, bounded by ReadBufferLimit:
	// without it, every connection could hold a 2 MiB unfinished get line (4 MiB of buffer) and
	// -c 1024 of them would hold 4 GiB.
	readBufs atomic.Int64
	closed   [numCloseReasons]atomic.Uint64
}

func tcpDefaults(cfg *Config) error {
	switch {
	case cfg.IdleTimeout < 0:
		return fmt.Errorf("negative idle timeout %v", cfg.IdleTimeout)
	case cfg.ReadBufferLimit < 0:
		return fmt.Errorf("negative read buffer limit %d", cfg.ReadBufferLimit)
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.ReadBufferLimit == 0 {
		cfg.ReadBufferLimit = max(64<<20, 8*cfg.MaxItemSize)
	}
	return nil
}

// growReadBuf reserves the bytes a connection's read buffer grows by; false if over the limit.
func (s *Server) growReadBuf(from, to int) bool {
	d := int64(max(to, readBufSize) - max(from, readBufSize))
	if d <= 0 {
		s.tcpLim.readBufs.Add(d)
		return true
	}
	if s.tcpLim.readBufs.Add(d) > s.cfg.ReadBufferLimit {
		s.tcpLim.readBufs.Add(-d)
		return false
	}
	return true
}

// tcpConn is one client connection.
type tcpConn struct {
	s        *Server
	nc       net.Conn
	stopping atomic.Bool
	// detach, with stopping, hands the connection over (Detach) instead of closing it.
	detach atomic.Bool
	// pending and swallow are the state of a connection handed over from another server.
	pending []byte
	swallow int
}

// ServeTCP accepts connections on ln until Shutdown, serving each in its own goroutine. It returns
// nil after Shutdown, ErrServerClosed if called after it, or the listener's error. It closes ln
// when it returns, whichever way (as net/http's Serve does), so a Serve that loses a race with
// Shutdown leaves no listener open.
func (s *Server) ServeTCP(ln net.Listener) error {
	if !s.track(func() { s.listeners[ln] = struct{}{}; s.wg.Add(1) }) {
		_ = ln.Close()
		return ErrServerClosed
	}
	defer func() {
		_ = ln.Close() // before wg.Done: once Shutdown returns, the port is free
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		s.wg.Done()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.stopped() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept connection: %w", err)
		}
		backoff = 0
		if s.st.currConns.Load() >= int64(s.cfg.ConnLimit) {
			s.st.rejectedConns.Add(1)
			_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = nc.Write([]byte(tooManyConns))
			_ = nc.Close()
			continue
		}
		c := &tcpConn{s: s, nc: nc}
		if !s.track(func() { s.conns[nc] = c; s.wg.Add(1) }) {
			// Shut down or detached after this accept: under Detach the listener's queue moves
			// on, but this connection came off it already.
			_ = nc.Close()
			return nil
		}
		s.st.currConns.Add(1)
		s.st.totalConns.Add(1)
		go c.serve()
	}
}

// stopReading makes a blocked read return, so the connection finishes what it has and closes.
func (c *tcpConn) stopReading() {
	c.stopping.Store(true)
	_ = c.nc.SetReadDeadline(time.Now())
}

func (c *tcpConn) serve() {
	s := c.s
	ss := s.getSession(false)
	defer func() {
		s.putSession(ss)
		_ = c.nc.Close()
		s.mu.Lock()
		delete(s.conns, c.nc)
		s.mu.Unlock()
		s.st.currConns.Add(-1)
		s.wg.Done()
	}()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	buf := make([]byte, max(readBufSize, len(c.pending)))
	// An adopted connection's buffer is its own; the limit applies to what it grows by later.
	s.growReadBuf(0, len(buf))
	defer func() { s.growReadBuf(len(buf), 0) }()
	r, w := 0, copy(buf, c.pending)
	ss.swallow, c.pending = c.swallow, nil
	lastReq := time.Now() // idle time counts from the last completed request, as memcached's
	for {
		n, act := ss.process(buf[r:w])
		r += n
		if n > 0 && s.cfg.IdleTimeout > 0 {
			lastReq = time.Now()
		}
		if len(ss.out) > 0 {
			if !c.write(ss) {
				return
			}
		}
		switch act {
		case actClose:
			return
		case actFlush:
			continue
		}
		// actNeedMore: make room for the rest of the request, then read.
		if r == w {
			r, w = 0, 0
			if len(buf) > maxIdleReadBuf {
				s.growReadBuf(len(buf), readBufSize)
				buf = make([]byte, readBufSize)
			}
		}
		need := max(ss.need, w-r+1)
		if need > len(buf)-r {
			if need > len(buf) {
				size := max(need, 2*len(buf))
				if !s.growReadBuf(len(buf), size) {
					s.tcpLim.closed[closeReadBuffer].Add(1)
					ss.out = append(ss.out[:0], outOfMemoryReading...)
					c.write(ss)
					return
				}
				nb := make([]byte, size)
				w = copy(nb, buf[r:w])
				buf = nb
			} else {
				w = copy(buf, buf[r:w])
			}
			r = 0
		}
		if s.cfg.IdleTimeout > 0 {
			// Set before the stopping check: a Shutdown after it still wakes the read.
			_ = c.nc.SetReadDeadline(lastReq.Add(s.cfg.IdleTimeout))
		}
		if c.stopping.Load() {
			if c.detach.Load() {
				c.handOver(buf[r:w], ss.swallow)
			}
			return
		}
		m, err := c.nc.Read(buf[w:])
		if m > 0 {
			w += m
			s.st.bytesRead.Add(uint64(m))
		}
		if err != nil && m == 0 {
			if c.detach.Load() && isTimeout(err) {
				c.handOver(buf[r:w], ss.swallow)
				return
			}
			if s.cfg.IdleTimeout > 0 && isTimeout(err) && !c.stopping.Load() {
				s.tcpLim.closed[closeIdle].Add(1)
			}
			return
		}
	}
}

// write sends the session's replies; false means the connection is gone, or its client took
// nothing for WriteTimeout (a slow reader that makes progress gets a fresh timeout each time).
func (c *tcpConn) write(ss *session) bool {
	wt := c.s.cfg.WriteTimeout
	out := ss.out
	var err error
	for len(out) > 0 {
		if wt > 0 {
			_ = c.nc.SetWriteDeadline(time.Now().Add(wt))
		}
		var n int
		n, err = c.nc.Write(out)
		c.s.st.bytesWritten.Add(uint64(n))
		out = out[n:]
		if err == nil || n == 0 || !isTimeout(err) {
			break
		}
	}
	if err != nil && isTimeout(err) {
		c.s.tcpLim.closed[closeWriteTimeout].Add(1)
	}
	if cap(ss.out) > 1<<20 {
		ss.out = make([]byte, 0, 4096)
	} else {
		ss.out = ss.out[:0]
	}
	return err == nil
}
