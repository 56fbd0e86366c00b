package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Sockets are what a Server served, as files that another Server, in this process or another one
// (the files pass over a unix socket), serves with Attach: listening TCP sockets, UDP sockets and
// client connections. Each connection was stopped at a request boundary, after the replies to
// every complete request it had read were written; Pending holds the bytes of a request not yet
// complete.
type Sockets struct {
	TCP   []*os.File
	UDP   []*os.File
	Conns []Conn
}

// Conn is a client connection handed over between servers.
type Conn struct {
	File *os.File
	// Pending are bytes read from the connection that do not yet form a complete request.
	Pending []byte
	// Swallow is how many more bytes of a rejected data block are to be discarded.
	Swallow int
}

// Files returns every file of sk: the listeners, the UDP sockets, then the connections.
func (sk *Sockets) Files() []*os.File {
	out := append(append([]*os.File{}, sk.TCP...), sk.UDP...)
	for _, c := range sk.Conns {
		out = append(out, c.File)
	}
	return out
}

// Close closes every file of sk. A socket stays open while another process holds it.
func (sk *Sockets) Close() error {
	var errs []error
	for _, f := range sk.Files() {
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ErrDetached is returned by Detach when the server is not serving (shut down, or already
// detached and not attached since).
var ErrDetached = errors.New("server: not serving")

// Detach stops serving without closing anything a client sees: the listeners and UDP sockets
// stop being read (what arrives waits in their queues), and every connection finishes the
// requests it has read, writes their replies, and stops. It returns the sockets as files once
// every one has stopped. The store and the kernel cache are untouched and no write happens
// after Detach returns, until Attach. When ctx ends first, the connections that have not
// stopped are closed (their clients see the connection drop) and ctx's error is returned with
// the sockets that did stop.
//
// A Server detached can serve again with Attach, its own sockets or others'.
func (s *Server) Detach(ctx context.Context) (*Sockets, error) {
	s.mu.Lock()
	if s.closed || s.detaching {
		s.mu.Unlock()
		return nil, ErrDetached
	}
	s.detaching = true
	s.handed = &Sockets{}
	var errs []error
	for ln := range s.listeners {
		f, err := fileOf(ln)
		if err != nil {
			errs = append(errs, fmt.Errorf("detach listener %v: %w", ln.Addr(), err))
		} else {
			s.handed.TCP = append(s.handed.TCP, f)
		}
		// Closing this descriptor leaves the socket listening: f holds it.
		_ = ln.Close()
	}
	for uc := range s.udpConns {
		f, err := uc.File()
		if err != nil {
			errs = append(errs, fmt.Errorf("detach udp socket %v: %w", uc.LocalAddr(), err))
		} else {
			s.handed.UDP = append(s.handed.UDP, f)
		}
		_ = uc.SetReadDeadline(time.Now())
	}
	for _, c := range s.conns {
		c.detach.Store(true)
		c.stopReading()
	}
	s.mu.Unlock()

	if err := s.waitOrClose(ctx); err != nil {
		errs = append(errs, fmt.Errorf("detach connections: %w", err))
	}
	s.mu.Lock()
	sk := s.handed
	s.handed = nil
	s.mu.Unlock()
	return sk, errors.Join(errs...)
}

// fileOf returns a duplicate of a listener's descriptor.
func fileOf(ln net.Listener) (*os.File, error) {
	if f, ok := ln.(interface{ File() (*os.File, error) }); ok {
		return f.File()
	}
	return nil, fmt.Errorf("%T has no file", ln)
}

// handOver is a connection's last act under Detach: it hands its socket and unhandled bytes to
// the Sockets being collected, and the caller then closes its own descriptor.
func (c *tcpConn) handOver(pending []byte, swallow int) {
	s := c.s
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return
	}
	f, err := fileOfConn(sc)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handed == nil {
		_ = f.Close()
		return
	}
	s.handed.Conns = append(s.handed.Conns, Conn{File: f, Pending: append([]byte(nil), pending...), Swallow: swallow})
}

func fileOfConn(sc syscall.Conn) (*os.File, error) {
	if f, ok := sc.(interface{ File() (*os.File, error) }); ok {
		return f.File()
	}
	return nil, errors.New("no file")
}

// Attach serves sk: each listener and UDP socket in a function passed to run (which runs it,
// for instance errgroup.Group.Go; it returns what ServeTCP or ServeUDP return), and each
// connection in its own goroutine, from its pending bytes on. It takes the files: they are
// closed once served or on error. It fails on a server shut down.
func (s *Server) Attach(sk *Sockets, run func(func() error)) error {
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.detaching = false
	}
	s.mu.Unlock()
	if closed {
		_ = sk.Close()
		return ErrServerClosed
	}
	var errs []error
	for _, f := range sk.TCP {
		ln, err := net.FileListener(f)
		_ = f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("attach listener: %w", err))
			continue
		}
		run(func() error { return s.ServeTCP(ln) })
	}
	for _, f := range sk.UDP {
		pc, err := net.FilePacketConn(f)
		_ = f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("attach udp socket: %w", err))
			continue
		}
		uc, ok := pc.(*net.UDPConn)
		if !ok {
			_ = pc.Close()
			errs = append(errs, fmt.Errorf("attach udp socket: %T is not UDP", pc))
			continue
		}
		run(func() error { return s.ServeUDP(uc) })
	}
	for _, hc := range sk.Conns {
		nc, err := net.FileConn(hc.File)
		_ = hc.File.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("attach connection: %w", err))
			continue
		}
		c := &tcpConn{s: s, nc: nc, pending: hc.Pending, swallow: hc.Swallow}
		if !s.track(func() { s.conns[nc] = c; s.wg.Add(1) }) {
			_ = nc.Close()
			continue
		}
		s.st.currConns.Add(1)
		go c.serve()
	}
	return errors.Join(errs...)
}

// stopped reports whether the server stopped reading: shut down or detached.
func (s *Server) stopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed || s.detaching
}
