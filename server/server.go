// Package server is xdpcache's memcached-compatible server: the text and meta protocols over TCP
// and UDP (memcached's 8-byte frame header), stats, metrics, and the hook that keeps the kernel
// cache consistent with every write (see KernelCache).
//
// A Server is safe for concurrent use. It never logs; per-request events are counters, exposed
// through `stats` and Prometheus metrics.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// ProtocolVersion is the memcached version whose protocol the server speaks. Clients such as
// memccapable sniff it from the `version` reply, so it comes first there.
const ProtocolVersion = "1.6.18"

// Defaults, as memcached's.
const (
	DefaultConnLimit   = 1024
	DefaultMemoryLimit = 64 << 20
	DefaultMaxItemSize = 1 << 20
)

// DefaultUpstreamUDPReaders is UDPReaders in upstream mode: how many UDP misses may wait for
// memcached at once before a UDP hit waits behind them.
const DefaultUpstreamUDPReaders = 16

// maxGetLine bounds a get/gets line (a multi-key get may be long, but not unbounded): 2 MiB holds
// some 8000 keys of the maximum length.
const maxGetLine = 2 << 20

// ErrServerClosed is returned by Serve calls made after Shutdown.
var ErrServerClosed = errors.New("server: closed")

// Config configures a Server.
type Config struct {
	// MemoryLimit is the item memory in bytes (memcached -m); 0 means DefaultMemoryLimit.
	MemoryLimit int64
	// MaxItemSize is the largest item (memcached -I); 0 means DefaultMaxItemSize.
	MaxItemSize int64
	// ConnLimit is the most simultaneous TCP connections (memcached -c); 0 means DefaultConnLimit.
	ConnLimit int
	// MaxDatagram is the largest UDP reply datagram, frame header included; 0 means 1400.
	MaxDatagram int
	// Kernel is the in-kernel cache kept consistent with the store; nil means no kernel path.
	Kernel KernelCache
	// KernelReplyDSCP is the DSCP the kernel path marks its replies with (0: unmarked), reported
	// in stats as kernel_reply_dscp (0 without a kernel path) so that clients such as bench can
	// tell kernel replies apart without being told the mark.
	KernelReplyDSCP uint8
	// Registry receives the server's metrics; nil means no metrics.
	Registry prometheus.Registerer
	// Version is ours, sent after the memcached protocol version in `version`.
	Version string

	// UDPReaders is how many goroutines read and answer each UDP socket, as memcached's worker
	// threads share its UDP socket. 0 picks 1, or DefaultUpstreamUDPReaders in upstream mode,
	// where a UDP miss waits for memcached in the goroutine that read it.
	UDPReaders int

	// Upstream mode (upstream.go): front these memcached servers, "host:port" each; empty means
	// none, the server is the cache of record.
	Upstreams []string
	// KernelMaxAge bounds how long a value fetched from an upstream is served locally and by the
	// kernel (at least 1s); 0 means DefaultKernelMaxAge.
	KernelMaxAge time.Duration
	// UpstreamDialTimeout and UpstreamTimeout bound connecting and one request to an upstream;
	// 0 means upstream.DefaultDialTimeout (500ms) and upstream.DefaultTimeout (1s).
	UpstreamDialTimeout, UpstreamTimeout time.Duration

	// UDP guard (guard.go): who the UDP path answers, and how much.
	// AllowSources are the source prefixes answered over UDP; nil means loopback and the subnets
	// of the UDP socket's address, an empty non-nil list answers no one.
	AllowSources []netip.Prefix
	// RatePerSource is UDP requests per second answered per source address; 0 means no limit.
	RatePerSource float64
	// Burst is the token bucket size per source; 0 means the rate rounded up (at least 1).
	Burst int
	// MaxAmplification caps a UDP reply's bytes at this many times its request's (frame headers
	// included); 0 means off. A reply over the cap is replaced by "SERVER_ERROR object too large
	// for UDP, use TCP", or by nothing if even that is over the cap.
	MaxAmplification float64

	// TCP limits against hostile clients (tcp.go).
	// IdleTimeout closes a TCP connection that has completed no request for this long, as
	// memcached's -o idle_timeout; 0 means never, memcached's default.
	IdleTimeout time.Duration
	// WriteTimeout closes a TCP connection whose client takes none of a pending reply for this
	// long; 0 means DefaultWriteTimeout, negative means never.
	WriteTimeout time.Duration
	// ReadBufferLimit bounds the bytes all TCP connections together hold in read buffers grown
	// past their first 16 KiB (long multi-key gets, large values); 0 means
	// max(64 MiB, 8 * MaxItemSize).
	ReadBufferLimit int64
}

// Server is a memcached-compatible server over one cache.Store.
type Server struct {
	cfg    Config
	store  *cache.Store
	kernel KernelCache
	// be carries out requests: localBackend, or upstreamBackend when fronting upstreams.
	be      backend
	guard   *guard
	st      counters
	metrics *metrics
	started time.Time
	// verbosity is only remembered for `stats settings`: the server does not log.
	verbosity atomic.Uint32
	// changes, when set, records the store's changed keys for a takeover (TrackChanges).
	changes atomic.Pointer[changeLog]

	sessions sync.Pool

	mu     sync.Mutex
	closed bool
	// detaching is set from Detach until Attach: serving stops without closing (handover.go).
	detaching bool
	handed    *Sockets // what Detach collects
	listeners map[net.Listener]struct{}
	udpConns  map[*net.UDPConn]struct{}
	conns     map[net.Conn]*tcpConn
	wg        sync.WaitGroup

	// tcpLim is the TCP hostile-client accounting (tcp.go).
	tcpLim tcpLimits
}

// New builds a server and its store. The store's hook is wired to the kernel cache, if any.
func New(cfg Config) (*Server, error) {
	if cfg.MemoryLimit == 0 {
		cfg.MemoryLimit = DefaultMemoryLimit
	}
	if cfg.MaxItemSize == 0 {
		cfg.MaxItemSize = DefaultMaxItemSize
	}
	if cfg.ConnLimit == 0 {
		cfg.ConnLimit = DefaultConnLimit
	}
	if cfg.MaxDatagram == 0 {
		cfg.MaxDatagram = protocol.MaxDatagram
	}
	switch {
	case cfg.MemoryLimit < 0:
		return nil, fmt.Errorf("check config: negative memory limit %d", cfg.MemoryLimit)
	case cfg.MaxItemSize < 1024:
		return nil, fmt.Errorf("check config: item size limit %d below 1024 bytes", cfg.MaxItemSize)
	case cfg.MaxItemSize > cfg.MemoryLimit:
		return nil, fmt.Errorf("check config: item size limit %d above memory limit %d", cfg.MaxItemSize, cfg.MemoryLimit)
	case cfg.ConnLimit < 0:
		return nil, fmt.Errorf("check config: negative connection limit %d", cfg.ConnLimit)
	case cfg.MaxDatagram <= protocol.FrameHeaderLen || cfg.MaxDatagram > 65507:
		return nil, fmt.Errorf("check config: datagram size %d out of range", cfg.MaxDatagram)
	case cfg.UDPReaders < 0 || cfg.UDPReaders > 1024:
		return nil, fmt.Errorf("check config: %d UDP readers, want 0 (auto) to 1024", cfg.UDPReaders)
	}
	if cfg.UDPReaders == 0 {
		cfg.UDPReaders = 1
		if len(cfg.Upstreams) > 0 {
			cfg.UDPReaders = DefaultUpstreamUDPReaders
		}
	}
	g, err := newGuard(cfg)
	if err != nil {
		return nil, fmt.Errorf("check config: %w", err)
	}
	if err := tcpDefaults(&cfg); err != nil {
		return nil, fmt.Errorf("check config: %w", err)
	}
	s := &Server{
		guard:     g,
		cfg:       cfg,
		kernel:    cfg.Kernel,
		started:   time.Now(),
		listeners: make(map[net.Listener]struct{}),
		udpConns:  make(map[*net.UDPConn]struct{}),
		conns:     make(map[net.Conn]*tcpConn),
	}
	s.store = cache.New(cache.Config{
		MemoryLimit: cfg.MemoryLimit,
		MaxItemSize: cfg.MaxItemSize,
		Hook:        storeHook{s},
	})
	s.be = localBackend{s}
	if len(cfg.Upstreams) > 0 {
		up, err := newUpstreamBackend(s, cfg)
		if err != nil {
			return nil, err
		}
		s.be = up
		if cfg.Registry != nil {
			if err := up.cluster.Register(cfg.Registry); err != nil {
				return nil, err
			}
		}
	}
	if cfg.Registry != nil {
		m, err := newMetrics(s, cfg.Registry)
		if err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
		s.metrics = m
		if err := cfg.Registry.Register(s.guardCollector()); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	s.sessions.New = func() any { return newSession(s) }
	return s, nil
}

// Store is the server's item store.
func (s *Server) Store() *cache.Store { return s.store }

// storeHook keeps the kernel copy consistent: the store calls it under the key's lock, before the
// write is acknowledged. Errors are counted, never logged per request. While a takeover copies the
// store, it also records which keys changed (TrackChanges).
type storeHook struct{ s *Server }

func (h storeHook) Changed(key string) {
	if h.s.kernel != nil {
		if err := h.s.kernel.Invalidate(key); err != nil {
			h.s.st.kernelErrors.Add(1)
		}
	}
	if l := h.s.changes.Load(); l != nil {
		l.mu.Lock()
		l.keys[strings.Clone(key)] = struct{}{} // key may be a view of a request buffer
		l.mu.Unlock()
	}
}

func (h storeHook) Flushed(deadline time.Time) {
	if h.s.kernel != nil {
		if err := h.s.kernel.Flush(deadline); err != nil {
			h.s.st.kernelErrors.Add(1)
		}
	}
	if l := h.s.changes.Load(); l != nil {
		l.mu.Lock()
		l.all = true
		l.mu.Unlock()
	}
}

// changeLog is the set of keys changed since TrackChanges began.
type changeLog struct {
	mu   sync.Mutex
	keys map[string]struct{}
	all  bool // a flush_all: every key may have changed
}

// TrackChanges records the key of every change to the store (writes, deletions, expiries,
// evictions) from now until the returned function is called, which returns those keys, and
// all = true if a flush_all came meanwhile. A takeover copies the store while serving and then
// sends only what changed. One tracking at a time.
func (s *Server) TrackChanges() (stop func() (keys []string, all bool)) {
	l := &changeLog{keys: make(map[string]struct{})}
	s.changes.Store(l)
	return func() ([]string, bool) {
		s.changes.CompareAndSwap(l, nil)
		l.mu.Lock()
		defer l.mu.Unlock()
		keys := make([]string, 0, len(l.keys))
		for k := range l.keys {
			keys = append(keys, k)
		}
		return keys, l.all
	}
}

// track registers a listener or connection for Shutdown; it fails once shut down or while
// detached.
func (s *Server) track(add func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.detaching {
		return false
	}
	add()
	return true
}

// Shutdown stops accepting connections and datagrams, lets every connection finish the requests
// it has read, then closes it. It waits for that or for ctx, whichever comes first; on ctx it
// closes the remaining connections at once and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	var errs []error
	for ln := range s.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close listener: %w", err))
		}
	}
	for uc := range s.udpConns {
		// Wake the reader; it finishes the batch in hand and returns.
		_ = uc.SetReadDeadline(time.Now())
	}
	for _, c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()

	if err := s.waitOrClose(ctx); err != nil {
		errs = append(errs, err)
	}
	// After the connections: none is waiting on an upstream any more.
	if err := s.be.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// waitOrClose waits until every Serve call and connection has returned, or until ctx ends: then
// it closes the connections still open, waits for them, and returns ctx's error.
func (s *Server) waitOrClose(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for nc := range s.conns {
			_ = nc.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// Serving returns how many TCP listeners and UDP sockets the server serves now: a Serve call
// counts from the moment it is tracked until it returns. Both are 0 once Shutdown has begun.
func (s *Server) Serving() (tcp, udp int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.detaching {
		return 0, 0
	}
	return len(s.listeners), len(s.udpConns)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
