package loadgen

import (
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// TestRunInNetns runs Run from a goroutine locked into a fresh network namespace whose only
// server is a fake one bound inside it. Had any socket been opened from another thread (the root
// namespace, where nothing listens on that port), its requests would fail.
func TestRunInNetns(t *testing.T) {
	testenv.RequireRoot(t)
	type result struct {
		rep  *Report
		f    *fakeUDP
		root string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var res result
		defer func() { done <- res }()
		runtime.LockOSThread() // never unlocked if restoring fails: the thread then dies with us
		orig, err := netns.Get()
		if err != nil {
			res.err = err
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			res.err = err
			return
		}
		defer ns.Close()
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			res.err = err
			return
		}
		res.f = newFakeUDP(t, "udp4", "127.0.0.1:0")
		res.f.hasKey = func(uint64) bool { return true }
		res.f.serve()
		cfg := quick(res.f.addr())
		cfg.Timeout = 300 * time.Millisecond
		res.rep, res.err = Run(context.Background(), cfg, nil)
	}()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.rep.Timeouts != 0 || res.rep.Errors != 0 || count(res.rep, UserHit) == 0 ||
		count(res.rep, UserHit) != res.f.unmarked.Load() {
		t.Errorf("in the namespace: hits %d (server sent %d), timeouts %d, errors %d",
			count(res.rep, UserHit), res.f.unmarked.Load(), res.rep.Timeouts, res.rep.Errors)
	}
}

// TestMetrics scrapes the Prometheus endpoint during a run.
func TestMetrics(t *testing.T) {
	f := newFakeUDP(t, "udp4", "127.0.0.1:0")
	f.dscp = 10
	f.hasKey = func(k uint64) bool { return k%2 == 0 }
	f.markKey = func(k uint64) bool { return k%4 == 0 }
	f.serve()
	cfg := quick(f.addr())
	cfg.KernelDSCP = 10
	cfg.Duration = 1500 * time.Millisecond
	cfg.MetricsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	type scrape struct {
		body string
		err  error
	}
	got := make(chan scrape, 1)
	go func() {
		time.Sleep(800 * time.Millisecond)
		resp, err := http.Get("http://" + cfg.MetricsAddr + "/metrics")
		if err != nil {
			got <- scrape{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- scrape{body: string(b), err: err}
	}()
	rep := run(t, cfg)
	s := <-got
	if s.err != nil {
		t.Fatalf("scrape during the run: %v", s.err)
	}
	for _, c := range []string{"kernel_hit", "user_hit", "user_miss"} {
		// Microsecond-range buckets, and a non-zero count for every class that answered.
		if !regexp.MustCompile(`xdpcache_bench_latency_seconds_bucket\{class="` + c + `",le="1e-06"\}`).MatchString(s.body) {
			t.Errorf("no 1 µs bucket for %s", c)
		}
		m := regexp.MustCompile(`xdpcache_bench_requests_total\{class="` + c + `"\} (\d+)`).FindStringSubmatch(s.body)
		if m == nil || m[1] == "0" {
			t.Errorf("xdpcache_bench_requests_total{class=%q} = %v mid-run", c, m)
		}
	}
	if !regexp.MustCompile(`xdpcache_bench_sent_total [1-9]`).MatchString(s.body) {
		t.Error("xdpcache_bench_sent_total missing or zero")
	}
	if count(rep, KernelHit) == 0 {
		t.Error("run had no kernel hits")
	}
	// The endpoint goes away with the run.
	if _, err := http.Get("http://" + cfg.MetricsAddr + "/metrics"); err == nil {
		t.Error("metrics endpoint still serving after Run returned")
	}
}
