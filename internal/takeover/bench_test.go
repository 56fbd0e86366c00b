package takeover

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/cache"
)

// BenchmarkTakeover measures a takeover's pause, from the old server's Detach to the new one
// serving (no kernel path), by store size: items of 100-byte values.
func BenchmarkTakeover(b *testing.B) {
	for _, items := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("items=%d", items), func(b *testing.B) {
			var total time.Duration
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
					_, err := l.Serve(context.Background(), Giver{Server: old.srv, Identity: identityB(old)}, nil)
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
		})
	}
}
