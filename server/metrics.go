package server

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// cmdID and statusID label requests for metrics; they index fixed tables so that the hot path
// never builds label strings.
type cmdID int

const (
	cmdOther cmdID = iota
	cmdGet
	cmdGets
	cmdGat
	cmdGats
	cmdSet
	cmdAdd
	cmdReplace
	cmdAppend
	cmdPrepend
	cmdCas
	cmdIncr
	cmdDecr
	cmdDelete
	cmdTouch
	cmdFlushAll
	cmdVersion
	cmdVerbosity
	cmdStats
	cmdQuit
	cmdMg
	cmdMs
	cmdMd
	cmdMa
	cmdMn
	cmdMe
	numCmds
)

var cmdNames = [numCmds]string{"other", "get", "gets", "gat", "gats", "set", "add", "replace",
	"append", "prepend", "cas", "incr", "decr", "delete", "touch", "flush_all", "version",
	"verbosity", "stats", "quit", "mg", "ms", "md", "ma", "mn", "me"}

type statusID int

const (
	statusNone statusID = iota
	statusHit
	statusMiss
	statusStored
	statusNotStored
	statusExists
	statusNotFound
	statusDeleted
	statusTouched
	statusOK
	statusError
	statusClientError
	statusServerError
	numStatuses
)

var statusNames = [numStatuses]string{"none", "hit", "miss", "stored", "not_stored", "exists",
	"not_found", "deleted", "touched", "ok", "error", "client_error", "server_error"}

// metrics are the server's Prometheus metrics. Counters that the server already keeps (items,
// bytes, evictions, connections, UDP requests) are read at scrape time.
type metrics struct {
	commands *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// Children resolved on first use; a nil entry has not been used yet.
	cmdCounters [numCmds][numStatuses]atomic.Pointer[prometheus.Counter]
	observers   [numProtos][numCmds]atomic.Pointer[prometheus.Observer]
}

// protoID labels a request by the transport it came over.
type protoID int

const (
	protoTCP protoID = iota
	protoUDP
	numProtos
)

var protoNames = [numProtos]string{"tcp", "udp"}

// durationBuckets are the classic buckets of xdpcache_request_duration_seconds: 1us to ~150ms.
// The client library's defaults start at 5ms and would hide every request the server answers
// from memory.
var durationBuckets = prometheus.ExponentialBuckets(1e-6, 2.5, 14)

func newMetrics(s *Server, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xdpcache_commands_total",
			Help: "Requests by command and status; multi-key gets count each key.",
		}, []string{"command", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xdpcache_request_duration_seconds",
			Help:    "Time the server spent on a request, from parsed line to reply buffered, by transport (tcp, udp) and command. Kernel-answered requests are in xdpcache_kernel_hit_duration_seconds.",
			Buckets: durationBuckets,
			// Native buckets ~10% wide, as many as 160 of them; a series that needs more is
			// reset at most once an hour rather than losing resolution sooner.
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"proto", "command"}),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	cs := []prometheus.Collector{
		m.commands, m.duration,
		gauge("xdpcache_items", "Items in the store.", func() float64 { return float64(s.store.Stats().CurrItems) }),
		gauge("xdpcache_item_bytes", "Bytes of the items in the store.", func() float64 { return float64(s.store.Stats().Bytes) }),
		gauge("xdpcache_limit_bytes", "The store's memory limit.", func() float64 { return float64(s.cfg.MemoryLimit) }),
		counter("xdpcache_evictions_total", "Live items evicted to make room.", func() float64 { return float64(s.store.Stats().Evictions) }),
		gauge("xdpcache_connections", "Open TCP connections.", func() float64 { return float64(s.st.currConns.Load()) }),
		counter("xdpcache_connections_total", "TCP connections accepted.", func() float64 { return float64(s.st.totalConns.Load()) }),
		counter("xdpcache_connections_rejected_total", "TCP connections refused over the limit.", func() float64 { return float64(s.st.rejectedConns.Load()) }),
		counter("xdpcache_udp_requests_total", "UDP requests that reached the server (not the kernel).", func() float64 { return float64(s.st.udpRequests.Load()) }),
		counter("xdpcache_udp_dropped_total", "UDP datagrams dropped: short, multi-datagram or truncated requests.", func() float64 { return float64(s.st.udpDropped.Load()) }),
		counter("xdpcache_kernel_errors_total", "Failed kernel cache calls (invalidate, offer, flush, stats).", func() float64 { return float64(s.st.kernelErrors.Load()) }),
		counter("xdpcache_read_bytes_total", "Bytes read from clients.", func() float64 { return float64(s.st.bytesRead.Load()) }),
		counter("xdpcache_written_bytes_total", "Bytes written to clients.", func() float64 { return float64(s.st.bytesWritten.Load()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// count adds one to the command's counter with status.
func (m *metrics) count(cmd cmdID, st statusID) {
	p := m.cmdCounters[cmd][st].Load()
	if p == nil {
		c := m.commands.WithLabelValues(cmdNames[cmd], statusNames[st])
		p = &c
		m.cmdCounters[cmd][st].Store(p)
	}
	(*p).Inc()
}

// observe records a finished request that came over proto. Gets count their keys in getKey;
// others count here.
func (m *metrics) observe(proto protoID, cmd cmdID, st statusID, start time.Time) {
	switch cmd {
	case cmdGet, cmdGets, cmdGat, cmdGats:
		if st == statusClientError {
			m.count(cmd, st)
		}
	default:
		m.count(cmd, st)
	}
	o := m.observers[proto][cmd].Load()
	if o == nil {
		ob := m.duration.WithLabelValues(protoNames[proto], cmdNames[cmd])
		o = &ob
		m.observers[proto][cmd].Store(o)
	}
	(*o).Observe(time.Since(start).Seconds())
}
