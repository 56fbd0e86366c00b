package loadgen

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// runMetrics are the Prometheus metrics of a run: latency per class (microsecond-range classic
// buckets and a native histogram), requests per class, timeouts and errors. They cover the whole
// run, warmup included, because they are for watching it live.
type runMetrics struct {
	reg      *prometheus.Registry
	latency  [numClasses]prometheus.Observer
	requests [numClasses]prometheus.Counter
	timeouts prometheus.Counter
	errors   prometheus.Counter
	sent     prometheus.CounterFunc
}

func newRunMetrics(sent func() float64) *runMetrics {
	m := &runMetrics{reg: prometheus.NewRegistry()}
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "xdpcache_bench_latency_seconds",
		Help: "Request latency from the intended send time, by who answered (kernel_hit, user_hit, user_miss, set).",
		// 1 µs to about 2 s: kernel hits sit in single-digit microseconds.
		Buckets:                         prometheus.ExponentialBuckets(1e-6, 2, 22),
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  200,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"class"})
	req := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xdpcache_bench_requests_total",
		Help: "Answered requests by class.",
	}, []string{"class"})
	m.timeouts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "xdpcache_bench_timeouts_total",
		Help: "Requests without a reply within the timeout.",
	})
	m.errors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "xdpcache_bench_errors_total",
		Help: "Requests answered with an error or a malformed reply, or that could not be sent.",
	})
	m.sent = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "xdpcache_bench_sent_total",
		Help: "Requests sent.",
	}, sent)
	for _, c := range Classes {
		m.latency[c] = lat.WithLabelValues(c.String())
		m.requests[c] = req.WithLabelValues(c.String())
	}
	m.reg.MustRegister(lat, req, m.timeouts, m.errors, m.sent)
	return m
}

func (m *runMetrics) observe(c Class, ns int64) {
	m.latency[c].Observe(float64(ns) / 1e9)
	m.requests[c].Inc()
}

// serve serves /metrics on l until the returned function is called.
func (m *runMetrics) serve(l net.Listener) (stop func() error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	return func() error {
		if err := srv.Close(); err != nil {
			return fmt.Errorf("close metrics server: %w", err)
		}
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve metrics: %w", err)
		}
		return nil
	}
}
