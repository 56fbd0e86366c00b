package upstream

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Cluster is the set of fronted servers with their ketama ring.
type Cluster struct {
	cfg     Config
	ring    *Ring
	servers []*Server
	byAddr  map[string]*Server
	closed  chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

// New checks cfg and returns a Cluster. It connects lazily: a server that is down is found by the
// first request for one of its keys.
func New(cfg Config) (*Cluster, error) {
	if len(cfg.Addrs) == 0 {
		return nil, ErrNoServers
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxIdle <= 0 {
		cfg.MaxIdle = DefaultMaxIdle
	}
	cfg.MaxIdle = min(cfg.MaxIdle, cfg.MaxConns)
	if cfg.MaxValueSize <= 0 {
		cfg.MaxValueSize = DefaultMaxValueSize
	}
	c := &Cluster{cfg: cfg, byAddr: make(map[string]*Server), closed: make(chan struct{})}
	for _, a := range cfg.Addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("parse upstream address %q: want host:port", a)
		}
		if _, dup := c.byAddr[a]; dup {
			return nil, fmt.Errorf("parse upstream address %q: listed twice", a)
		}
		s := newServer(a, &c.cfg, c.closed, &c.wg)
		c.servers = append(c.servers, s)
		c.byAddr[a] = s
	}
	c.ring = NewRing(cfg.Addrs)
	return c, nil
}

// Pick returns the server that owns key.
func (c *Cluster) Pick(key []byte) *Server { return c.servers[c.ring.Pick(key)] }

// Servers returns the servers in the configured order.
func (c *Cluster) Servers() []*Server { return c.servers }

// Close stops the probes, closes idle connections and makes further requests fail with
// ErrClosed. It waits for the probes to return.
func (c *Cluster) Close() error {
	c.once.Do(func() { close(c.closed) })
	c.wg.Wait()
	for _, s := range c.servers {
		s.close()
	}
	return nil
}

// Register exports the cluster's metrics to reg:
// xdpcache_upstream_requests_total{upstream,status}, xdpcache_upstream_up{upstream} and
// xdpcache_upstream_request_duration_seconds{upstream}.
func (c *Cluster) Register(reg prometheus.Registerer) error {
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "xdpcache_upstream_request_duration_seconds",
		Help: "Round trip of a request (or a pipelined batch) to a fronted memcached server.",
		// 10us .. ~4s: loopback round trips are tens of microseconds, timeouts one second.
		Buckets:                         prometheus.ExponentialBuckets(10e-6, 2.5, 15),
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"upstream"})
	if err := reg.Register(dur); err != nil {
		return fmt.Errorf("register upstream metrics: %w", err)
	}
	if err := reg.Register(collector{c}); err != nil {
		return fmt.Errorf("register upstream metrics: %w", err)
	}
	for _, s := range c.servers {
		o := dur.WithLabelValues(s.addr)
		s.duration = func(d time.Duration) { o.Observe(d.Seconds()) }
	}
	return nil
}

var (
	requestsDesc = prometheus.NewDesc("xdpcache_upstream_requests_total",
		"Requests (or pipelined batches) to fronted memcached servers by outcome: ok, unavailable (failed fast, server down), error (connect, write or read failed or timed out), busy, protocol_error.",
		[]string{"upstream", "status"}, nil)
	upDesc = prometheus.NewDesc("xdpcache_upstream_up",
		"1 if requests are sent to the fronted memcached server, 0 while it is down and probed.",
		[]string{"upstream"}, nil)
)

// collector reads the servers' counters at scrape time.
type collector struct{ c *Cluster }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- requestsDesc
	ch <- upDesc
}

func (k collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range k.c.servers {
		for st := range numStatuses {
			ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, float64(s.counts[st].Load()), s.addr, st.String())
		}
		up := 0.0
		if s.Up() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, s.addr)
	}
}
