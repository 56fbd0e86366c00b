package bpf

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// passReasons labels xdpcache_kernel_passes_total{reason}; indexed by the generated enum counter.
var passReasons = map[xdpcacheCounter]string{
	xdpcacheCounterPASS_NOT_IP_UDP:    "not_ip_udp",
	xdpcacheCounterPASS_WRONG_PORT:    "wrong_port",
	xdpcacheCounterPASS_IP_OPTIONS:    "ip_options",
	xdpcacheCounterPASS_IPV6EXT:       "ipv6_ext_headers",
	xdpcacheCounterPASS_FRAGMENT:      "fragment",
	xdpcacheCounterPASS_NOT_FRAMED:    "not_memcached_frame",
	xdpcacheCounterPASS_NOT_GET:       "not_get",
	xdpcacheCounterPASS_KEY_TOO_LONG:  "key_too_long",
	xdpcacheCounterPASS_TOO_MANY_KEYS: "too_many_keys",
	xdpcacheCounterPASS_MISS:          "miss",
	xdpcacheCounterPASS_EXPIRED:       "expired",
	xdpcacheCounterPASS_FLUSHED:       "flushed",
	xdpcacheCounterPASS_PARTIAL:       "partial_multiget",
	xdpcacheCounterPASS_TOO_BIG:       "too_big",
	xdpcacheCounterPASS_MALFORMED:     "malformed",
	xdpcacheCounterPASS_INTERNAL:      "internal",
	xdpcacheCounterPASS_NOT_ALLOWED:   "not_allowed",
	xdpcacheCounterPASS_RATE_LIMITED:  "rate_limited",
	xdpcacheCounterPASS_AMPLIFICATION: "amplification",
	xdpcacheCounterPASS_META_FLAGS:    "meta_flags",
	xdpcacheCounterPASS_TO_TC:         "to_tc",
}

// PassCounts returns the pass counters by reason label, summed over CPUs.
func (c *Cache) PassCounts() (map[string]uint64, error) {
	counts, err := c.counters()
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(passReasons))
	for idx, name := range passReasons {
		out[name] = counts[idx]
	}
	return out, nil
}

// EnableStats turns on the kernel's per-program run time and run count accounting
// (kernel.bpf_stats_enabled) for as long as the returned Closer stays open.
func EnableStats() (io.Closer, error) {
	cl, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable bpf run time stats: %w", err)
	}
	return cl, nil
}

// EnableRunStats enables run time accounting until the cache is closed, so the collector's
// program_run metrics move.
func (c *Cache) EnableRunStats() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if c.statsCloser != nil {
		return nil
	}
	cl, err := EnableStats()
	if err != nil {
		return err
	}
	c.statsCloser = cl
	return nil
}

var (
	descHits = prometheus.NewDesc("xdpcache_kernel_hits_total",
		"Keys served in the kernel, by the XDP or the TC program (a multi-get of n keys counts n).", nil, nil)
	descRequests = prometheus.NewDesc("xdpcache_kernel_requests_total",
		"GET requests answered in the kernel, by the XDP or the TC program.", nil, nil)
	descBytes = prometheus.NewDesc("xdpcache_kernel_bytes_sent_total",
		"UDP payload bytes of replies sent by the kernel programs.", nil, nil)
	descTCHits = prometheus.NewDesc("xdpcache_kernel_tc_hits_total",
		"Of xdpcache_kernel_hits_total, the keys the TC program served: replies the XDP frame had no room to grow to.", nil, nil)
	descTCRequests = prometheus.NewDesc("xdpcache_kernel_tc_requests_total",
		"Of xdpcache_kernel_requests_total, the GET requests the TC program answered.", nil, nil)
	descPasses = prometheus.NewDesc("xdpcache_kernel_passes_total",
		"Packets the kernel programs passed to the network stack, by reason (to_tc: XDP handed the request to the TC program).", []string{"reason"}, nil)
	descRunSeconds = prometheus.NewDesc("xdpcache_kernel_program_run_seconds_total",
		"Time the kernel spent running the XDP program (needs kernel.bpf_stats_enabled).", nil, nil)
	descRuns = prometheus.NewDesc("xdpcache_kernel_program_runs_total",
		"Runs of the XDP program (needs kernel.bpf_stats_enabled).", nil, nil)
	descEntries = prometheus.NewDesc("xdpcache_kernel_cache_entries",
		"Keys in the kernel cache.", nil, nil)
	descCacheBytes = prometheus.NewDesc("xdpcache_kernel_cache_bytes",
		"Bytes charged to the kernel cache budget.", nil, nil)
	descFills = prometheus.NewDesc("xdpcache_kernel_fills_total",
		"Entries installed in the kernel cache: new keys and new versions of cached ones.", nil, nil)
	descFillsSkipped = prometheus.NewDesc("xdpcache_kernel_fills_skipped_total",
		"Offers the kernel cache would have installed but had no free chunk for: every chunk of the size was live or waiting out its second of retirement.", nil, nil)
	descEvictions = prometheus.NewDesc("xdpcache_kernel_evictions_total",
		"Live entries the kernel cache dropped for a new one, by reason: space (its byte or entry limit) or index (both of the new key's index slots taken).",
		[]string{"reason"}, nil)
	descRefused = prometheus.NewDesc("xdpcache_kernel_admissions_refused_total",
		"Offers of new keys the kernel cache refused, by reason: frequency (not seen often enough) or victim (not asked for more often than the entry it would evict).",
		[]string{"reason"}, nil)
	descAttached = prometheus.NewDesc("xdpcache_kernel_attached",
		"1 while the XDP program is attached to iface in mode (native or generic), else 0.",
		[]string{"iface", "mode"}, nil)
)

// collector reads the maps and the program's kernel stats at scrape time (ebpf_exporter style).
type collector struct{ c *Cache }

// OffCollector reports xdpcache_kernel_attached as 0 for a server running without the kernel
// path (not configured, or it failed to start), so one alert on that family covers both.
func OffCollector(iface string) prometheus.Collector { return offCollector{iface: iface} }

type offCollector struct{ iface string }

func (offCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descAttached }

func (o offCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 0, o.iface, "")
}

// Collector returns a prometheus.Collector for the kernel cache's counters.
func (c *Cache) Collector() prometheus.Collector { return collector{c} }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHits, descRequests, descBytes, descTCHits, descTCRequests, descPasses, descRunSeconds, descRuns, descEntries, descCacheBytes, descFills, descFillsSkipped, descEvictions, descRefused, descAttached, descHitTime} {
		ch <- d
	}
}

func (k collector) Collect(ch chan<- prometheus.Metric) {
	if iface, mode := k.c.Attached(); iface != "" {
		ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 1, iface, string(mode))
	} else {
		ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 0, "", "")
	}
	counts, err := k.c.counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descHits, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(counts[xdpcacheCounterCNT_HITS]))
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(counts[xdpcacheCounterCNT_REQUESTS]))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(counts[xdpcacheCounterCNT_BYTES]))
	ch <- prometheus.MustNewConstMetric(descTCHits, prometheus.CounterValue, float64(counts[xdpcacheCounterCNT_TC_HITS]))
	ch <- prometheus.MustNewConstMetric(descTCRequests, prometheus.CounterValue, float64(counts[xdpcacheCounterCNT_TC_REQUESTS]))
	for idx, name := range passReasons {
		ch <- prometheus.MustNewConstMetric(descPasses, prometheus.CounterValue, float64(counts[idx]), name)
	}
	if hts, err := k.c.HitTimes(); err == nil {
		for _, name := range hitTimePrograms {
			if m, err := newHitTimeMetric(name, hts[name], k.c.created); err == nil {
				ch <- m
			} else {
				ch <- prometheus.NewInvalidMetric(descHitTime, err)
			}
		}
	} else {
		ch <- prometheus.NewInvalidMetric(descHitTime, err)
	}
	if st, err := k.c.objs.XdpCache.Stats(); err == nil {
		ch <- prometheus.MustNewConstMetric(descRunSeconds, prometheus.CounterValue, st.Runtime.Seconds())
		ch <- prometheus.MustNewConstMetric(descRuns, prometheus.CounterValue, float64(st.RunCount))
	} else {
		ch <- prometheus.NewInvalidMetric(descRunSeconds, err)
	}
	n, b := k.c.Len()
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(descCacheBytes, prometheus.GaugeValue, float64(b))
	churn := k.c.Churn()
	ch <- prometheus.MustNewConstMetric(descFills, prometheus.CounterValue, float64(churn.Fills))
	ch <- prometheus.MustNewConstMetric(descFillsSkipped, prometheus.CounterValue, float64(churn.FillsSkipped))
	ch <- prometheus.MustNewConstMetric(descEvictions, prometheus.CounterValue, float64(churn.EvictedSpace), "space")
	ch <- prometheus.MustNewConstMetric(descEvictions, prometheus.CounterValue, float64(churn.EvictedIndex), "index")
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(churn.RefusedFrequency), "frequency")
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(churn.RefusedVictim), "victim")
}
