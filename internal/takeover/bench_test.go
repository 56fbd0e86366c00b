package takeover

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/cache"
)

// BenchmarkTakeover measures a takeover by store size (no kernel path, items of 100-byte values):
// the whole of it, and its pause, from the old server's Detach to its commit (the items are
// copied before, while the old server serves).
func BenchmarkTakeover(b *testing.B) {
	for _, items := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("items=%d", items), func(b *testing.B) {
			var total, paused time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				old := startNodeB(b)
				val := make([]byte, 100)
				for k := range items {
					if _, err := old.srv.Store().Do(fmt.Sprintf("key:%d", k), func(*cache.Item) (*cache.Item, cache.Op) {
						return &cache.Item{Value: val}, cache.Replace
					}); err != nil {
						b.Fatal(err)
					}
				}
				path := fmt.Sprintf("@xdpcache-bench-%d", time.Now().UnixNano())
				l, err := Listen(path)
				if err != nil {
					b.Fatal(err)
				}
				served := make(chan error, 1)
				go func() {
					h, err := l.Serve(context.Background(), Giver{Server: old.srv, Identity: identityB(old)}, nil)
					if h != nil {
						paused += h.Paused
					}
					served <- err
				}()
				next := newNodeB(b)
				b.StartTimer()
				start := time.Now()
				tk, err := Take(context.Background(), path, Taker{Server: next.srv, Identity: identityB(old), Run: next.run})
				total += time.Since(start)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if err := <-served; err != nil {
					b.Fatal(err)
				}
				if tk.Items != items {
					b.Fatalf("moved %d items, want %d", tk.Items, items)
				}
				l.Close()
				old.shutdown()
				next.shutdown()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/takeover")
			b.ReportMetric(float64(paused.Microseconds())/1e3/float64(b.N), "pause-ms")
		})
	}
}
