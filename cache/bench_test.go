package cache

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// The benchmarks run each case with one shard (a single lock: the baseline) and with the default
// 64, so the ratio between them is the gain from sharding on this machine.

const benchKeys = 1 << 14

var benchValue = make([]byte, 32)

func benchKeySet() []string {
	keys := make([]string, benchKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("key:%012d", i) // 16 B keys, as in BMC's workload
	}
	return keys
}

func benchStore(b *testing.B, shards int, keys []string) *Store {
	b.Helper()
	s := New(Config{MemoryLimit: 256 << 20, Shards: shards})
	for _, k := range keys {
		if _, err := s.Do(k, func(*Item) (*Item, Op) { return &Item{Value: benchValue}, Replace }); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

var shardCases = []int{1, 64}

func BenchmarkGet(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, ok := s.Get(keys[i&(benchKeys-1)]); !ok {
					b.Fatal("miss")
				}
				i++
			}
		})
	}
}

// BenchmarkView reads with View, copying each value into a reused buffer as the server copies it
// into its reply: a read that obtains the value bytes without an allocation.
func BenchmarkView(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			b.ReportAllocs()
			var buf []byte
			i := 0
			for b.Loop() {
				if !s.View(keys[i&(benchKeys-1)], func(it *Item) { buf = append(buf[:0], it.Value...) }) {
					b.Fatal("miss")
				}
				i++
			}
			if len(buf) != len(benchValue) {
				b.Fatalf("read %d bytes, stored %d", len(buf), len(benchValue))
			}
		})
	}
}

// BenchmarkViewHot reads an eighth of the keys over and over, so that each read finds its item
// near the head of its LRU list, as the reads of a skewed workload do (the others cycle through
// every key, so that each read finds its item at the tail).
func BenchmarkViewHot(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			b.ReportAllocs()
			var buf []byte
			i := 0
			for b.Loop() {
				if !s.View(keys[i&(benchKeys/8-1)], func(it *Item) { buf = append(buf[:0], it.Value...) }) {
					b.Fatal("miss")
				}
				i++
			}
		})
	}
}

func BenchmarkSet(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := s.Do(keys[i&(benchKeys-1)], func(*Item) (*Item, Op) {
					return &Item{Value: benchValue}, Replace
				}); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkGetParallel(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			var seed atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				for pb.Next() {
					if _, ok := s.Get(keys[i&(benchKeys-1)]); !ok {
						b.Error("miss")
						return
					}
					i++
				}
			})
		})
	}
}

func BenchmarkViewParallel(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			var seed atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				buf := make([]byte, 0, 64)
				for pb.Next() {
					if !s.View(keys[i&(benchKeys-1)], func(it *Item) { buf = append(buf[:0], it.Value...) }) {
						b.Error("miss")
						return
					}
					i++
				}
			})
		})
	}
}

func BenchmarkSetParallel(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			var seed atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				for pb.Next() {
					if _, err := s.Do(keys[i&(benchKeys-1)], func(*Item) (*Item, Op) {
						return &Item{Value: benchValue}, Replace
					}); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkMixedParallel is 90% Get, 10% Replace, the usual cache read/write mix.
func BenchmarkMixedParallel(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			var seed atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				for pb.Next() {
					k := keys[i&(benchKeys-1)]
					if i%10 == 0 {
						s.Do(k, func(*Item) (*Item, Op) { return &Item{Value: benchValue}, Replace })
					} else {
						s.Get(k)
					}
					i++
				}
			})
		})
	}
}

// BenchmarkMixedViewParallel is BenchmarkMixedParallel reading with View, copying each value
// into a buffer, as the server's get does.
func BenchmarkMixedViewParallel(b *testing.B) {
	keys := benchKeySet()
	for _, n := range shardCases {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := benchStore(b, n, keys)
			var seed atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				buf := make([]byte, 0, 64)
				for pb.Next() {
					k := keys[i&(benchKeys-1)]
					if i%10 == 0 {
						s.Do(k, func(*Item) (*Item, Op) { return &Item{Value: benchValue}, Replace })
					} else {
						s.View(k, func(it *Item) { buf = append(buf[:0], it.Value...) })
					}
					i++
				}
			})
		})
	}
}

// BenchmarkSetEvicting stores into a store that holds a quarter of the keys, so every store
// evicts: the cost of the eviction path and its hook calls.
func BenchmarkSetEvicting(b *testing.B) {
	keys := benchKeySet()
	limit := int64(benchKeys/4) * itemSize(keys[0], benchValue)
	var hooked atomic.Int64
	s := New(Config{MemoryLimit: limit, Shards: 16, Hook: countHook{n: &hooked}})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.Do(keys[i&(benchKeys-1)], func(*Item) (*Item, Op) {
			return &Item{Value: benchValue}, Replace
		}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if st := s.Stats(); b.N > benchKeys && st.Evictions == 0 {
		b.Fatalf("no evictions: %+v", st)
	}
}
