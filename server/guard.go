package server

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// The UDP guard keeps the server from being a reflector (docs/DESIGN.md invariant 7), with the same
// three rules the kernel path applies: a datagram is answered only if its source is in the
// allow-list, its source's token bucket has a token, and the reply is at most MaxAmplification
// times the request's size. A datagram from a source not allowed or over its rate is dropped
// without a reply: answering it would reflect at whoever the source claims to be. A reply over
// the cap is replaced by the short tooLargeForUDP error, so that an allowed client learns to use
// TCP instead of timing out; the error itself obeys the cap, else nothing is sent. Everything is
// counted by reason. UDP sources can be forged, so these rules bound what a forger can make the
// server send to a victim; they authenticate nothing.

// refuseReason indexes the guard's counters.
type refuseReason int

const (
	refuseSource refuseReason = iota
	refuseRate
	refuseAmplification
	numRefuseReasons
)

var refuseNames = [numRefuseReasons]string{"source", "rate", "amplification"}

// tooLargeForUDP answers a UDP request whose reply is over the amplification cap. memcached
// never refuses a reply; this is ours. With its frame header it is 56 bytes.
const tooLargeForUDP = "SERVER_ERROR object too large for UDP, use TCP\r\n"

// ErrGuardConfig is a UDP guard setting out of range.
var ErrGuardConfig = errors.New("server: invalid UDP guard setting")

// rateSlots is the size of the per-source token bucket table: fixed, so a flood of sources cannot
// grow memory (32 bytes a slot).
const rateSlots = 1 << 14

// Rate limits: below minRate or above maxBurst the bucket arithmetic in ns would overflow.
const (
	minRate  = 0.001
	maxBurst = 1 << 20
)

// rateStripes is the number of locks over the table.
const rateStripes = 64

// guard applies the UDP rules. Safe for concurrent use.
type guard struct {
	allow    []netip.Prefix // nil: computed per socket, see allowFor
	rate     float64        // tokens per second; 0: no rate limit
	interval int64          // ns to earn one token
	span     int64          // (burst-1) intervals: how far ahead a bucket may be spent
	maxAmp   float64        // 0: no cap
	seed     maphash.Seed
	buckets  []bucket
	locks    [rateStripes]sync.Mutex
	refused  [numRefuseReasons]atomic.Uint64
	// answered counts the refusals answered with an error (amplification only).
	answered [numRefuseReasons]atomic.Uint64
}

// bucket is one slot of the token bucket table.
type bucket struct {
	src netip.Addr
	tat int64 // unix ns when the bucket is full again
}

func newGuard(cfg Config) (*guard, error) {
	switch {
	case cfg.RatePerSource < 0 || math.IsNaN(cfg.RatePerSource) || math.IsInf(cfg.RatePerSource, 0),
		cfg.RatePerSource > 0 && cfg.RatePerSource < minRate:
		return nil, fmt.Errorf("check rate per source %v: %w", cfg.RatePerSource, ErrGuardConfig)
	case cfg.Burst < 0 || cfg.Burst > maxBurst:
		return nil, fmt.Errorf("check burst %d: %w", cfg.Burst, ErrGuardConfig)
	case cfg.MaxAmplification < 0 || math.IsNaN(cfg.MaxAmplification):
		return nil, fmt.Errorf("check amplification cap %v: %w", cfg.MaxAmplification, ErrGuardConfig)
	case cfg.MaxAmplification > 0 && cfg.MaxAmplification < 1:
		// Every reply is longer than the request that asked for it, less than 1 answers nothing.
		return nil, fmt.Errorf("check amplification cap %v below 1: %w", cfg.MaxAmplification, ErrGuardConfig)
	}
	g := &guard{rate: cfg.RatePerSource, maxAmp: cfg.MaxAmplification, seed: maphash.MakeSeed()}
	for _, p := range cfg.AllowSources {
		if !p.IsValid() {
			return nil, fmt.Errorf("check allowed source %v: %w", p, ErrGuardConfig)
		}
		g.allow = append(g.allow, p.Masked())
	}
	if cfg.AllowSources != nil && len(g.allow) == 0 {
		// An explicit empty list answers no one, which is a valid choice (TCP only in effect).
		g.allow = []netip.Prefix{}
	}
	if g.rate > 0 {
		burst := int64(cfg.Burst)
		if burst == 0 {
			burst = int64(math.Max(1, math.Ceil(g.rate)))
		}
		g.interval = max(1, int64(1e9/g.rate))
		g.span = (burst - 1) * g.interval
		g.buckets = make([]bucket, rateSlots)
	}
	return g, nil
}

// allowFor is the allow-list for a socket: the configured one, or by default loopback and the
// subnets of the socket's local address (every local subnet for a wildcard address).
func (g *guard) allowFor(conn *net.UDPConn) []netip.Prefix {
	if g.allow != nil {
		return g.allow
	}
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	local, _ := conn.LocalAddr().(*net.UDPAddr)
	if local == nil {
		return allow
	}
	ip, _ := netip.AddrFromSlice(local.IP)
	ip = ip.Unmap()
	subnets := localSubnets(conn)
	for _, p := range subnets {
		if ip.IsUnspecified() || p.Addr() == ip {
			allow = append(allow, p.Masked())
		}
	}
	if !ip.IsUnspecified() && ip.IsValid() && !containsAddr(allow, ip) {
		// Address not found on any interface (for instance, no permission to look): at least
		// the address itself, so a client on the same host is answered.
		allow = append(allow, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return allow
}

// localSubnets lists the interface addresses, with their prefix lengths, of the network namespace
// the socket lives in, which may not be the calling thread's. It asks that namespace through
// SIOCGSKNS (needs CAP_NET_ADMIN there) and falls back to the process's own interfaces.
func localSubnets(conn *net.UDPConn) []netip.Prefix {
	if ps, err := socketNamespaceSubnets(conn); err == nil {
		return ps
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(n.String()); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

func socketNamespaceSubnets(conn *net.UDPConn) ([]netip.Prefix, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("get raw socket: %w", err)
	}
	nsfd, ierr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) {
		nsfd, ierr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS)
	}); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if ierr != nil {
		return nil, fmt.Errorf("get socket namespace: %w", ierr)
	}
	ns := netns.NsHandle(nsfd)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink in socket namespace: %w", err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), bits))
	}
	return out, nil
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// admit decides whether a datagram from src may be answered at all: allow-list, then rate. It
// counts a refusal. now is taken once per batch.
func (g *guard) admit(allow []netip.Prefix, src netip.Addr, now int64) bool {
	src = src.Unmap()
	if !containsAddr(allow, src) {
		g.refused[refuseSource].Add(1)
		return false
	}
	if g.rate > 0 && !g.take(src, now) {
		g.refused[refuseRate].Add(1)
		return false
	}
	return true
}

// take spends one token from src's bucket, kept as GCRA does: tat is when the bucket will be full
// again; a request is allowed if that is at most burst-1 intervals ahead, and pushes it one
// interval on. Integer nanoseconds, so no rounding can grant or withhold a token.
//
// The table is fixed-size and indexed by a seeded hash: a source that finds its slot held by
// another takes it over only when the holder's bucket is full (an idle holder is in the same state
// as a fresh one, so nothing is lost); otherwise it is charged to the holder's bucket. A collision
// can thus only limit more, never hand a forger a fresh bucket for its victim.
func (g *guard) take(src netip.Addr, now int64) bool {
	i := g.slot(src)
	mu := &g.locks[i%rateStripes]
	mu.Lock()
	defer mu.Unlock()
	b := &g.buckets[i]
	if !b.src.IsValid() || (b.src != src && b.tat <= now) {
		*b = bucket{src: src, tat: now}
	}
	tat := max(b.tat, now)
	if tat-now > g.span {
		return false
	}
	b.tat = tat + g.interval
	return true
}

// slot is src's place in the token bucket table.
func (g *guard) slot(src netip.Addr) uint64 { return maphash.Comparable(g.seed, src) % rateSlots }

// within reports whether replies totalling replyBytes may answer a request of reqBytes.
func (g *guard) within(reqBytes, replyBytes int) bool {
	return g.maxAmp == 0 || float64(replyBytes) <= g.maxAmp*float64(reqBytes)
}

// fits reports whether replies totalling replyBytes may answer a request of reqBytes, and counts
// a refusal.
func (g *guard) fits(reqBytes, replyBytes int) bool {
	if g.within(reqBytes, replyBytes) {
		return true
	}
	g.refused[refuseAmplification].Add(1)
	return false
}

// tooLarge returns the datagram that answers req (frame header included) in place of a reply over
// the cap: one message with req's request ID carrying tooLargeForUDP. It returns nil, and the
// request gets no reply, when even that would be over the cap or req has no valid frame header.
func (g *guard) tooLarge(req []byte) []byte {
	h, err := protocol.ParseFrameHeader(req)
	if err != nil {
		return nil
	}
	d := make([]byte, 0, protocol.FrameHeaderLen+len(tooLargeForUDP))
	d = protocol.FrameHeader{RequestID: h.RequestID, Total: 1}.AppendTo(d)
	d = append(d, tooLargeForUDP...)
	if !g.within(len(req), len(d)) {
		return nil
	}
	g.answered[refuseAmplification].Add(1)
	return d
}

// Refused returns how many UDP requests the guard refused, by reason: "source" (not in the
// allow-list) and "rate" (source over its rate), both dropped unanswered, and "amplification"
// (reply over the cap), answered with a short error when that fits the cap (RefusalsAnswered).
func (s *Server) Refused() map[string]uint64 {
	out := make(map[string]uint64, numRefuseReasons)
	for i, n := range refuseNames {
		out[n] = s.guard.refused[i].Load()
	}
	return out
}

// RefusalsAnswered returns how many refused UDP requests got an error reply instead of the reply
// they asked for, by reason; only "amplification" is ever answered.
func (s *Server) RefusalsAnswered() map[string]uint64 {
	return map[string]uint64{refuseNames[refuseAmplification]: s.guard.answered[refuseAmplification].Load()}
}

// guardCollector exports the UDP refusals as xdpcache_udp_refused_total{reason} and the TCP
// connections closed for hostile behaviour as xdpcache_tcp_closed_total{reason}.
type guardCollector struct {
	s                         *Server
	refused, answered, closed *prometheus.Desc
}

func (s *Server) guardCollector() prometheus.Collector {
	return guardCollector{s: s,
		refused: prometheus.NewDesc("xdpcache_udp_refused_total",
			"UDP requests the server refused: source not allowed or over its rate (dropped unanswered), or reply over the amplification cap (see xdpcache_udp_refusals_answered_total).",
			[]string{"reason"}, nil),
		answered: prometheus.NewDesc("xdpcache_udp_refusals_answered_total",
			"Refused UDP requests answered with a short SERVER_ERROR telling the client to use TCP instead of the reply (reply over the amplification cap; the error fits the cap).",
			[]string{"reason"}, nil),
		closed: prometheus.NewDesc("xdpcache_tcp_closed_total",
			"TCP connections the server closed: idle past the idle timeout, not reading replies past the write timeout, or over the read buffer limit.",
			[]string{"reason"}, nil),
	}
}

func (c guardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.refused
	ch <- c.answered
	ch <- c.closed
}

func (c guardCollector) Collect(ch chan<- prometheus.Metric) {
	for i, n := range refuseNames {
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(c.s.guard.refused[i].Load()), n)
	}
	ch <- prometheus.MustNewConstMetric(c.answered, prometheus.CounterValue,
		float64(c.s.guard.answered[refuseAmplification].Load()), refuseNames[refuseAmplification])
	for i, n := range closeNames {
		ch <- prometheus.MustNewConstMetric(c.closed, prometheus.CounterValue, float64(c.s.tcpLim.closed[i].Load()), n)
	}
}
