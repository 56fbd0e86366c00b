package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// startMemcached runs Debian's memcached on a free port of 127.0.0.1, TCP and UDP, for the test,
// with its default four worker threads: one thread's UDP socket overflows under this load.
func startMemcached(t *testing.T) string {
	return testenv.StartMemcached(t, true, "-m", "64", "-t", "4").Addr
}

// TestMemcached loads the key space into a real memcached, then gets and sets over each protocol:
// every get must hit, with large values reassembled from several UDP datagrams.
func TestMemcached(t *testing.T) {
	addr := startMemcached(t)
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			cfg := Defaults()
			cfg.Server = addr
			cfg.Proto = proto
			cfg.Keys = 2000
			cfg.KeyDist = "zipf"
			cfg.KeyScramble = true
			cfg.ValueSize = "32:0.5,5000:0.5"
			cfg.GetRatio = 0.9
			cfg.Rate = 3000
			cfg.Warmup = 200 * time.Millisecond
			cfg.Duration = time.Second
			cfg.Seed = 1
			rep := run(t, cfg)
			// memcached's UDP socket drops datagrams when it falls behind (a busy test machine
			// can stall it for tens of ms); those are genuine timeouts, but they must be rare.
			if rep.Errors != 0 || float64(rep.Timeouts) > 0.03*rep.AchievedRate*rep.DurationS {
				t.Fatalf("errors %d, timeouts %d", rep.Errors, rep.Timeouts)
			}
			if rep.HitRatio != 1 || count(rep, UserMiss) != 0 || count(rep, KernelHit) != 0 {
				t.Errorf("hit ratio %.4f with every key loaded (misses %d, kernel hits %d)",
					rep.HitRatio, count(rep, UserMiss), count(rep, KernelHit))
			}
			gets := count(rep, UserHit)
			if share := float64(count(rep, Set)) / float64(gets+count(rep, Set)); math.Abs(share-0.1) > 0.03 {
				t.Errorf("sets are %.3f of requests, want 0.1", share)
			}
			if math.Abs(rep.AchievedRate-3000)/3000 > 0.1 {
				t.Errorf("achieved %.0f req/s of 3000", rep.AchievedRate)
			}
		})
	}
}

// TestMemcachedHitRatio sets every other key by hand and gets uniformly without a load phase: the
// measured hit ratio must be one half, and the missing keys misses.
func TestMemcachedHitRatio(t *testing.T) {
	addr := startMemcached(t)
	cfg := Defaults()
	cfg.Server = addr
	cfg.Keys = 1000
	cfg.KeyDist = "uniform"
	cfg.NoLoad = true
	cfg.GetRatio = 1
	cfg.Warmup = 0
	cfg.Duration = time.Second
	cfg.Rate = 4000
	cfg.Seed = 3
	model, err := (&cfg).validate()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for k := uint64(0); k < cfg.Keys; k += 2 {
		key := model.space.Append(nil, k)
		if _, err := fmt.Fprintf(c, "set %s 0 0 3\r\nabc\r\n", key); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "STORED\r\n" {
			t.Fatalf("set %s: %q %v", key, line, err)
		}
	}
	rep, err := Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// About 4000 uniform draws: the standard deviation of the ratio is 0.008.
	if math.Abs(rep.HitRatio-0.5) > 0.04 || count(rep, UserMiss) == 0 {
		t.Errorf("hit ratio %.3f with half the keys set, misses %d", rep.HitRatio, count(rep, UserMiss))
	}
	if rep.Errors != 0 || float64(rep.Timeouts) > 0.03*rep.AchievedRate*rep.DurationS {
		t.Errorf("errors %d, timeouts %d", rep.Errors, rep.Timeouts)
	}
}
