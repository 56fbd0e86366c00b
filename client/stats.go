package client

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Reason says why a get request went over TCP instead of UDP.
type Reason int

// Reasons for a TCP fallback. ReasonNone is a request answered over UDP.
const (
	ReasonNone Reason = iota
	// ReasonTimeout: no whole reply within UDPTimeout, after UDPRetries more attempts.
	ReasonTimeout
	// ReasonServerError: the server answered SERVER_ERROR over UDP, as a server does for a
	// reply it will not send over UDP.
	ReasonServerError
	// ReasonBadReply: a reply that is not a well-formed answer to the request (an error reply,
	// an unknown key, bytes that do not add up, inconsistent datagram numbering).
	ReasonBadReply
	// ReasonTooLarge: a reply of more datagrams than the client reassembles.
	ReasonTooLarge
	// ReasonUnreachable: the UDP socket failed (port unreachable, no route, cannot be opened).
	ReasonUnreachable
	// ReasonDown: the server's UDP port failed recently (unreachable, or several requests in a
	// row timed out) and is left alone for a while.
	ReasonDown
	// ReasonNoUDP: the server's address has no UDP form (a Unix socket).
	ReasonNoUDP
	// ReasonNoRequestID: every request id of the server's socket is in flight or recently given up.
	ReasonNoRequestID
	numReasons
)

var reasonNames = [numReasons]string{"none", "timeout", "server_error", "bad_reply", "too_large",
	"unreachable", "down", "no_udp", "no_request_id"}

// String is the reason's label in metrics.
func (r Reason) String() string {
	if r < 0 || r >= numReasons {
		return "unknown"
	}
	return reasonNames[r]
}

// Stats is a snapshot of a Client's counters since New. A get request is one `gets` message to
// one server: Get makes one, GetMulti one or more per server.
type Stats struct {
	// UDPGets counts get requests answered over UDP.
	UDPGets uint64
	// KernelReplies counts those whose every datagram carried KernelDSCP, the mark the
	// server's kernel path sets on the replies it sends (0 when KernelDSCP is 0).
	KernelReplies uint64
	// UDPTimeouts counts UDP attempts that got no whole reply within UDPTimeout.
	UDPTimeouts uint64
	// UDPRetries counts UDP attempts sent again after a timeout.
	UDPRetries uint64
	// UDPDatagrams counts the get datagrams sent, first attempts and retries; UDPSends the
	// system calls (sendmmsg) that sent them. Gets of goroutines running at the same time leave
	// together, so under load a send carries several datagrams.
	UDPDatagrams, UDPSends uint64
	// TCPGets counts get requests sent over TCP: the fallbacks, and every get when UDP is off.
	TCPGets uint64
	// Fallbacks counts get requests sent over TCP after trying or skipping UDP, by reason
	// (index ReasonNone stays 0).
	Fallbacks [numReasons]uint64
}

// Fallback returns the fallbacks for one reason.
func (s Stats) Fallback(r Reason) uint64 {
	if r < 0 || r >= numReasons {
		return 0
	}
	return s.Fallbacks[r]
}

type counters struct {
	udpGets, kernelReplies, timeouts, retries, tcpGets atomic.Uint64
	datagrams, sends                                   atomic.Uint64
	fallbacks                                          [numReasons]atomic.Uint64
}

// Stats returns a snapshot of the client's counters.
func (c *Client) Stats() Stats {
	s := Stats{
		UDPGets:       c.ctr.udpGets.Load(),
		KernelReplies: c.ctr.kernelReplies.Load(),
		UDPTimeouts:   c.ctr.timeouts.Load(),
		UDPRetries:    c.ctr.retries.Load(),
		UDPDatagrams:  c.ctr.datagrams.Load(),
		UDPSends:      c.ctr.sends.Load(),
		TCPGets:       c.ctr.tcpGets.Load(),
	}
	for i := range s.Fallbacks {
		s.Fallbacks[i] = c.ctr.fallbacks[i].Load()
	}
	return s
}

// collector exports a Client's Stats as Prometheus counters, read at scrape time.
type collector struct {
	c                                                         *Client
	udpGets, kernelReplies, timeouts, retries, tcp, fallbacks *prometheus.Desc
	datagrams, sends                                          *prometheus.Desc
}

// NewCollector returns a Prometheus collector of c's counters, named xdpcache_client_*. Register
// one per client, with prometheus.WrapRegistererWith labels to tell several clients apart.
func NewCollector(c *Client) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("xdpcache_client_"+name, help, labels, nil)
	}
	return &collector{
		c:             c,
		udpGets:       d("udp_gets_total", "Get requests answered over UDP."),
		kernelReplies: d("kernel_replies_total", "UDP get replies that carried the kernel path's DSCP mark."),
		timeouts:      d("udp_timeouts_total", "UDP get attempts that got no whole reply in time."),
		retries:       d("udp_retries_total", "UDP get attempts sent again after a timeout."),
		datagrams:     d("udp_datagrams_total", "UDP get datagrams sent, retries included."),
		sends:         d("udp_sends_total", "System calls that sent UDP get datagrams (several per call under load)."),
		tcp:           d("tcp_gets_total", "Get requests sent over TCP (fallbacks, or UDP off)."),
		fallbacks:     d("fallbacks_total", "Get requests sent over TCP after trying or skipping UDP, by reason.", "reason"),
	}
}

func (k *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{k.udpGets, k.kernelReplies, k.timeouts, k.retries, k.datagrams, k.sends, k.tcp, k.fallbacks} {
		ch <- d
	}
}

func (k *collector) Collect(ch chan<- prometheus.Metric) {
	s := k.c.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(k.udpGets, s.UDPGets)
	counter(k.kernelReplies, s.KernelReplies)
	counter(k.timeouts, s.UDPTimeouts)
	counter(k.retries, s.UDPRetries)
	counter(k.datagrams, s.UDPDatagrams)
	counter(k.sends, s.UDPSends)
	counter(k.tcp, s.TCPGets)
	for r := ReasonTimeout; r < numReasons; r++ {
		counter(k.fallbacks, s.Fallbacks[r], r.String())
	}
}
