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

// tcpConn is one client connection.
type tcpConn struct {
	s        *Server
	nc       net.Conn
	stopping atomic.Bool
}

// ServeTCP accepts connections on ln until Shutdown, serving each in its own goroutine. It returns
// nil after Shutdown, ErrServerClosed if called after it, or the listener's error.
func (s *Server) ServeTCP(ln net.Listener) error {
	if !s.track(func() { s.listeners[ln] = struct{}{}; s.wg.Add(1) }) {
		return ErrServerClosed
	}
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		s.wg.Done()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
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
	buf := make([]byte, readBufSize)
	r, w := 0, 0
	for {
		n, act := ss.process(buf[r:w])
		r += n
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
				buf = make([]byte, readBufSize)
			}
		}
		need := max(ss.need, w-r+1)
		if need > len(buf)-r {
			if need > len(buf) {
				nb := make([]byte, max(need, 2*len(buf)))
				w = copy(nb, buf[r:w])
				buf = nb
			} else {
				w = copy(buf, buf[r:w])
			}
			r = 0
		}
		if c.stopping.Load() {
			return
		}
		m, err := c.nc.Read(buf[w:])
		if m > 0 {
			w += m
			s.st.bytesRead.Add(uint64(m))
		}
		if err != nil && m == 0 {
			return
		}
	}
}

// write sends the session's replies; false means the connection is gone.
func (c *tcpConn) write(ss *session) bool {
	n, err := c.nc.Write(ss.out)
	c.s.st.bytesWritten.Add(uint64(n))
	if cap(ss.out) > 1<<20 {
		ss.out = make([]byte, 0, 4096)
	} else {
		ss.out = ss.out[:0]
	}
	return err == nil
}
