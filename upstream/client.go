package upstream

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config's zero values.
const (
	DefaultDialTimeout   = 500 * time.Millisecond
	DefaultTimeout       = time.Second
	DefaultRetryInterval = time.Second
	DefaultMaxConns      = 64
	DefaultMaxIdle       = 16
	DefaultMaxValueSize  = 64 << 20
)

// maxReplyLine bounds one reply line (a meta reply with every flag is far shorter).
const maxReplyLine = 8 << 10

var (
	// ErrUnavailable is returned for requests to a server that is down or just failed.
	ErrUnavailable = errors.New("upstream: server unavailable")
	// ErrBusy is returned when every connection to a server stayed in use for Timeout.
	ErrBusy = errors.New("upstream: all connections busy")
	// ErrProtocol is returned for a reply that is not memcached's meta protocol.
	ErrProtocol = errors.New("upstream: malformed reply")
	// ErrClosed is returned after Cluster.Close.
	ErrClosed = errors.New("upstream: closed")
	// ErrNoServers is returned by New for an empty server list.
	ErrNoServers = errors.New("upstream: no servers")
)

// Config configures a Cluster.
type Config struct {
	// Addrs are the servers, "host:port" each; their order does not affect placement.
	Addrs []string
	// DialTimeout bounds connecting; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// Timeout bounds one request, from the first byte written to the last byte of the reply read;
	// 0 means DefaultTimeout.
	Timeout time.Duration
	// RetryInterval is how often a down server is probed; 0 means DefaultRetryInterval.
	RetryInterval time.Duration
	// MaxConns bounds the open connections per server; 0 means DefaultMaxConns.
	MaxConns int
	// MaxIdle bounds the idle connections kept per server; 0 means DefaultMaxIdle.
	MaxIdle int
	// MaxValueSize bounds a value read from a server; 0 means DefaultMaxValueSize.
	MaxValueSize int
}

// Status labels a request's outcome in Counts and metrics.
type Status int

const (
	// StatusOK: a complete reply was read (whatever memcached answered).
	StatusOK Status = iota
	// StatusUnavailable: failed at once, the server being down.
	StatusUnavailable
	// StatusError: connecting, writing or reading failed or timed out; the server is now down.
	StatusError
	// StatusBusy: no connection became free within Timeout.
	StatusBusy
	// StatusProtocol: the reply was malformed; the connection was dropped.
	StatusProtocol
	numStatuses
)

var statusNames = [numStatuses]string{"ok", "unavailable", "error", "busy", "protocol_error"}

// String is the status's metric label.
func (s Status) String() string {
	if s < 0 || s >= numStatuses {
		return "invalid"
	}
	return statusNames[s]
}

// Server is one fronted memcached server.
type Server struct {
	addr string
	cfg  *Config
	// slots holds a token per connection that may be open; idle holds open idle connections.
	slots chan struct{}
	idle  chan *conn
	up    atomic.Bool
	// probing is set while the background probe runs (at most one per server).
	probing atomic.Bool
	counts  [numStatuses]atomic.Uint64
	// duration observes request times for metrics; nil when there are none.
	duration func(time.Duration)
	closed   <-chan struct{}
	wg       *sync.WaitGroup
}

type conn struct {
	nc net.Conn
	r  *bufio.Reader
}

func newServer(addr string, cfg *Config, closed <-chan struct{}, wg *sync.WaitGroup) *Server {
	s := &Server{
		addr:   addr,
		cfg:    cfg,
		slots:  make(chan struct{}, cfg.MaxConns),
		idle:   make(chan *conn, cfg.MaxIdle),
		closed: closed,
		wg:     wg,
	}
	s.up.Store(true)
	return s
}

// Addr is the server's "host:port".
func (s *Server) Addr() string { return s.addr }

// Up reports whether requests are being sent to the server (false: it is down and probed).
func (s *Server) Up() bool { return s.up.Load() }

// Count returns how many requests ended with status.
func (s *Server) Count(st Status) uint64 { return s.counts[st].Load() }

// Do writes req (n complete requests) and reads n replies. A reply is one line, and for a line
// starting "VA <size>" the data block after it: the replies of the meta commands and of every
// text command except the retrieval ones (get, gets, gat, gats), which callers must not send. Each returned reply slices one buffer and
// includes its line ends.
func (s *Server) Do(req []byte, n int) ([][]byte, error) {
	start := time.Now()
	replies, st, err := s.do(req, n)
	s.counts[st].Add(1)
	if s.duration != nil && st != StatusUnavailable {
		s.duration(time.Since(start))
	}
	return replies, err
}

func (s *Server) do(req []byte, n int) ([][]byte, Status, error) {
	select {
	case <-s.closed:
		return nil, StatusUnavailable, fmt.Errorf("query %s: %w", s.addr, ErrClosed)
	default:
	}
	if !s.up.Load() {
		return nil, StatusUnavailable, fmt.Errorf("query %s: %w", s.addr, ErrUnavailable)
	}
	deadline := time.Now().Add(s.cfg.Timeout)
	c, st, err := s.get(deadline)
	if err != nil {
		return nil, st, err
	}
	_ = c.nc.SetDeadline(deadline)
	if _, err := c.nc.Write(req); err != nil {
		s.fail(c)
		return nil, StatusError, fmt.Errorf("write to %s: %w: %w", s.addr, ErrUnavailable, err)
	}
	var buf []byte
	ends := make([]int, 0, n)
	for range n {
		buf, err = readReply(c.r, buf, s.cfg.MaxValueSize)
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				// The server is alive but the stream is out of step: drop only this connection.
				s.discard(c)
				return nil, StatusProtocol, fmt.Errorf("read from %s: %w", s.addr, err)
			}
			s.fail(c)
			return nil, StatusError, fmt.Errorf("read from %s: %w: %w", s.addr, ErrUnavailable, err)
		}
		ends = append(ends, len(buf))
	}
	s.put(c)
	replies := make([][]byte, n)
	prev := 0
	for i, e := range ends {
		replies[i] = buf[prev:e:e]
		prev = e
	}
	return replies, StatusOK, nil
}

// get returns an idle connection or dials one, within the connection limit.
func (s *Server) get(deadline time.Time) (*conn, Status, error) {
	select {
	case s.slots <- struct{}{}:
	default:
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case s.slots <- struct{}{}:
		case <-t.C:
			return nil, StatusBusy, fmt.Errorf("query %s: %w", s.addr, ErrBusy)
		case <-s.closed:
			return nil, StatusUnavailable, fmt.Errorf("query %s: %w", s.addr, ErrClosed)
		}
	}
	select {
	case c := <-s.idle:
		return c, StatusOK, nil
	default:
	}
	c, err := s.dial()
	if err != nil {
		<-s.slots
		s.markDown()
		return nil, StatusError, fmt.Errorf("connect to %s: %w: %w", s.addr, ErrUnavailable, err)
	}
	return c, StatusOK, nil
}

func (s *Server) dial() (*conn, error) {
	nc, err := net.DialTimeout("tcp", s.addr, s.cfg.DialTimeout)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return &conn{nc: nc, r: bufio.NewReaderSize(nc, 16<<10)}, nil
}

// put returns a healthy connection to the idle pool, or closes it if the pool is full.
func (s *Server) put(c *conn) {
	select {
	case s.idle <- c:
	default:
		_ = c.nc.Close()
	}
	<-s.slots
}

// discard closes a connection that is out of step with its server.
func (s *Server) discard(c *conn) {
	_ = c.nc.Close()
	<-s.slots
}

// fail closes a connection whose server did not answer and marks the server down.
func (s *Server) fail(c *conn) {
	s.discard(c)
	s.markDown()
}

// markDown stops requests to the server, drops its idle connections (they lead to the same dead
// server) and starts the probe if it is not running.
func (s *Server) markDown() {
	s.up.Store(false)
	for {
		select {
		case c := <-s.idle:
			_ = c.nc.Close()
			continue
		default:
		}
		break
	}
	if !s.probing.CompareAndSwap(false, true) {
		return
	}
	s.wg.Add(1)
	go s.probe()
}

// probe dials the server every RetryInterval until it answers `version`, then marks it up.
func (s *Server) probe() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			s.probing.Store(false)
			return
		case <-t.C:
		}
		if c, err := s.dial(); err == nil {
			ok := ping(c, s.cfg.Timeout)
			_ = c.nc.Close()
			if ok {
				// Clear probing first: a failure right after marking up must start a new probe.
				s.probing.Store(false)
				s.up.Store(true)
				return
			}
		}
	}
}

// ping sends `version` and reports whether a VERSION line came back in time.
func ping(c *conn, timeout time.Duration) bool {
	_ = c.nc.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c.nc, "version\r\n"); err != nil {
		return false
	}
	line, err := c.r.ReadSlice('\n')
	return err == nil && bytes.HasPrefix(line, []byte("VERSION "))
}

// close drops the idle connections.
func (s *Server) close() {
	for {
		select {
		case c := <-s.idle:
			_ = c.nc.Close()
		default:
			return
		}
	}
}

// readReply appends one reply to dst: a line, and the data block of a "VA <size>" line.
func readReply(r *bufio.Reader, dst []byte, maxValue int) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return dst, fmt.Errorf("%w: line longer than %d bytes", ErrProtocol, r.Size())
		}
		return dst, err
	}
	if len(line) > maxReplyLine {
		return dst, fmt.Errorf("%w: line of %d bytes", ErrProtocol, len(line))
	}
	dst = append(dst, line...)
	if !bytes.HasPrefix(line, []byte("VA ")) {
		return dst, nil
	}
	size, ok := leadingUint(line[3:])
	if !ok || size > uint64(maxValue) {
		return dst, fmt.Errorf("%w: bad value size in %q", ErrProtocol, bytes.TrimSpace(line))
	}
	n := len(dst)
	dst = append(dst, make([]byte, int(size)+2)...)
	if _, err := io.ReadFull(r, dst[n:]); err != nil {
		return dst[:n], err
	}
	if dst[len(dst)-2] != '\r' || dst[len(dst)-1] != '\n' {
		return dst, fmt.Errorf("%w: data block not ended by CRLF", ErrProtocol)
	}
	return dst, nil
}

// leadingUint parses the decimal number at the start of b, up to a space or line end.
func leadingUint(b []byte) (uint64, bool) {
	end := bytes.IndexAny(b, " \r\n")
	if end <= 0 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[:end]), 10, 64)
	return v, err == nil
}

// Value is a key's state at a server, as an `mg <key> v f t c` request returns it.
type Value struct {
	Found bool
	Flags uint32
	// TTL is the seconds left before the item expires at the server; -1 means never.
	TTL   int64
	CAS   uint64
	Value []byte
}

// AppendGet appends the request whose reply ParseValue reads: "mg <key>[ T<touch>] v f t c".
// touch, if not nil, is a raw exptime token: the request then also sets the item's expiry, as
// gat does. A key with bytes the meta protocol cannot carry as text is sent base64-encoded.
func AppendGet(dst, key, touch []byte) []byte {
	dst = append(dst, "mg "...)
	bin := !textKey(key)
	if bin {
		dst = base64.StdEncoding.AppendEncode(dst, key)
	} else {
		dst = append(dst, key...)
	}
	if bin {
		dst = append(dst, " b"...)
	}
	// Flags act in order: T first, so that t reports the new TTL.
	if touch != nil {
		dst = append(append(dst, " T"...), touch...)
	}
	return append(dst, " v f t c\r\n"...)
}

// textKey reports whether key can be sent as it is in a meta request.
func textKey(key []byte) bool {
	for _, b := range key {
		if b <= ' ' || b == 0x7f {
			return false
		}
	}
	return len(key) > 0
}

// ParseValue reads the reply to an AppendGet request. The value is copied.
func ParseValue(reply []byte) (Value, error) {
	if bytes.HasPrefix(reply, []byte("EN\r\n")) || bytes.Equal(reply, []byte("EN\n")) {
		return Value{}, nil
	}
	if !bytes.HasPrefix(reply, []byte("VA ")) {
		return Value{}, fmt.Errorf("%w: %q", ErrProtocol, firstLine(reply))
	}
	nl := bytes.IndexByte(reply, '\n')
	line := bytes.TrimRight(reply[:nl], "\r")
	fields := bytes.Fields(line[3:])
	if len(fields) == 0 {
		return Value{}, fmt.Errorf("%w: %q", ErrProtocol, line)
	}
	size, err := strconv.Atoi(string(fields[0]))
	if err != nil || size < 0 || nl+1+size+2 != len(reply) {
		return Value{}, fmt.Errorf("%w: %q", ErrProtocol, line)
	}
	v := Value{Found: true, TTL: -1}
	seen := 0
	for _, f := range fields[1:] {
		if len(f) < 2 {
			continue
		}
		arg := string(f[1:])
		switch f[0] {
		case 'f':
			x, err := strconv.ParseUint(arg, 10, 32)
			if err != nil {
				return Value{}, fmt.Errorf("%w: flags in %q", ErrProtocol, line)
			}
			v.Flags, seen = uint32(x), seen|1
		case 't':
			x, err := strconv.ParseInt(arg, 10, 64)
			if err != nil {
				return Value{}, fmt.Errorf("%w: ttl in %q", ErrProtocol, line)
			}
			v.TTL, seen = x, seen|2
		case 'c':
			x, err := strconv.ParseUint(arg, 10, 64)
			if err != nil {
				return Value{}, fmt.Errorf("%w: cas in %q", ErrProtocol, line)
			}
			v.CAS, seen = x, seen|4
		}
	}
	if seen != 7 {
		return Value{}, fmt.Errorf("%w: missing f, t or c in %q", ErrProtocol, line)
	}
	v.Value = bytes.Clone(reply[nl+1 : nl+1+size])
	if v.Value == nil {
		v.Value = []byte{}
	}
	return v, nil
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return bytes.TrimRight(b, "\r")
}

// Get fetches keys with one pipelined round trip. Values are in the order of keys. A non-nil
// touch is a raw exptime token that each found item is given as well (gat).
func (s *Server) Get(keys [][]byte, touch []byte) ([]Value, error) {
	var req []byte
	for _, k := range keys {
		req = AppendGet(req, k, touch)
	}
	replies, err := s.Do(req, len(keys))
	if err != nil {
		return nil, err
	}
	vals := make([]Value, len(keys))
	for i, r := range replies {
		if vals[i], err = ParseValue(r); err != nil {
			return nil, fmt.Errorf("fetch from %s: %w", s.addr, err)
		}
	}
	return vals, nil
}
