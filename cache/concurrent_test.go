package cache

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// blockingHook starts, from inside the hook, a Do on the same key in another goroutine, and
// reports whether that Do completed while the hook was still running.
type blockingHook struct {
	s       *Store
	wait    time.Duration
	armed   atomic.Bool // set after setup, so that only the operation under test is watched
	ran     atomic.Int32
	overlap atomic.Int32
	done    chan struct{}
}

func (h *blockingHook) Changed(key string) {
	if !h.armed.Load() || h.ran.Add(1) != 1 {
		return
	}
	go func() {
		defer close(h.done)
		_, _ = h.s.Do(key, func(*Item) (*Item, Op) { return nil, Keep })
	}()
	// If the competing Do could take the key's lock now, it would finish well within this wait.
	select {
	case <-h.done:
		h.overlap.Add(1)
	case <-time.After(h.wait):
	}
}

func (h *blockingHook) Flushed(time.Time) {}

func TestHookBlocksSameKey(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(s *Store)
		op    func(s *Store) error
	}{
		{"Replace", nil, func(s *Store) error {
			_, err := s.Do("k", func(*Item) (*Item, Op) { return &Item{Value: []byte("v")}, Replace })
			return err
		}},
		{"Modify", func(s *Store) { s.Do("k", func(*Item) (*Item, Op) { return &Item{Value: []byte("v")}, Replace }) },
			func(s *Store) error {
				_, err := s.Do("k", func(cur *Item) (*Item, Op) { cur.Flags = 1; return nil, Modify })
				return err
			}},
		{"Delete", func(s *Store) { s.Do("k", func(*Item) (*Item, Op) { return &Item{Value: []byte("v")}, Replace }) },
			func(s *Store) error {
				_, err := s.Do("k", func(*Item) (*Item, Op) { return nil, Delete })
				return err
			}},
		{"Get of expired", func(s *Store) {
			s.Do("k", func(*Item) (*Item, Op) { return &Item{Value: []byte("v"), Exptime: s.Exptime(-1)}, Replace })
		}, func(s *Store) error { s.Get("k"); return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &blockingHook{wait: 50 * time.Millisecond, done: make(chan struct{})}
			s := New(Config{Shards: 4, Hook: h})
			h.s = s
			if tc.setup != nil {
				tc.setup(s)
			}
			h.armed.Store(true)
			if err := tc.op(s); err != nil {
				t.Fatal(err)
			}
			select {
			case <-h.done:
			case <-time.After(10 * time.Second):
				t.Fatal("the competing Do never completed")
			}
			if h.ran.Load() != 1 {
				t.Fatalf("hook ran %d times, want 1", h.ran.Load())
			}
			if h.overlap.Load() != 0 {
				t.Fatal("a Do on the same key completed while the hook was running")
			}
		})
	}
}

// TestConcurrent runs random operations from many goroutines on a small key set in a small
// store; run with -race. It checks per-key consistency and the store's bookkeeping.
func TestConcurrent(t *testing.T) {
	var hookCalls atomic.Int64
	hook := countHook{n: &hookCalls}
	const keys = 64
	s := New(Config{Shards: 4, MemoryLimit: 16 << 10, MaxItemSize: 2 << 10, Hook: hook})
	workers := 4 * runtime.GOMAXPROCS(0)
	if workers < 8 {
		workers = 8
	}
	const opsPerWorker = 3000
	var wg sync.WaitGroup
	var errs atomic.Int64
	var lastCAS [keys]atomic.Uint64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range opsPerWorker {
				k := r.IntN(keys)
				key := fmt.Sprintf("key-%d", k)
				switch r.IntN(10) {
				case 0, 1, 2:
					// The value names the key, so a value under the wrong key shows.
					cas, err := s.Do(key, func(*Item) (*Item, Op) {
						return &Item{Value: []byte(fmt.Sprintf("%s/%0*d", key, r.IntN(200), 0))}, Replace
					})
					if err != nil {
						errs.Add(1)
						continue
					}
					// CAS for one key only grows: the later Replace holds the later unique.
					for {
						old := lastCAS[k].Load()
						if cas <= old || lastCAS[k].CompareAndSwap(old, cas) {
							break
						}
					}
				case 3:
					// append: read-modify-write under the lock.
					s.Do(key, func(cur *Item) (*Item, Op) {
						if cur == nil || len(cur.Value) > 500 {
							return nil, Keep
						}
						v := append(append([]byte(nil), cur.Value...), 'x')
						return &Item{Value: v, Flags: cur.Flags}, Replace
					})
				case 4:
					s.Do(key, func(*Item) (*Item, Op) { return nil, Delete })
				case 5:
					s.Do(key, func(cur *Item) (*Item, Op) {
						if cur == nil {
							return nil, Keep
						}
						cur.Flags++
						return nil, Modify
					})
				case 6:
					if r.IntN(100) == 0 {
						s.FlushAll(0)
					} else {
						s.Sweep(16)
					}
				default:
					if it, ok := s.Get(key); ok {
						if len(it.Value) < len(key)+1 || string(it.Value[:len(key)+1]) != key+"/" {
							errs.Add(1)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	if n := errs.Load(); n != 0 {
		t.Fatalf("%d operations failed or read another key's value", n)
	}
	checkInvariants(t, s)
	st := s.Stats()
	if st.Bytes > uint64(st.LimitMaxBytes) {
		t.Fatalf("bytes %d over limit %d", st.Bytes, st.LimitMaxBytes)
	}
	if hookCalls.Load() == 0 || st.TotalItems == 0 {
		t.Fatalf("nothing happened: %+v, %d hook calls", st, hookCalls.Load())
	}
}

type countHook struct{ n *atomic.Int64 }

func (h countHook) Changed(string)    { h.n.Add(1) }
func (h countHook) Flushed(time.Time) { h.n.Add(1) }

func TestConcurrentCASUnique(t *testing.T) {
	s := New(Config{Shards: 16})
	const workers, per = 8, 2000
	got := make([][]uint64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				cas, err := s.Do(fmt.Sprintf("w%d-%d", w, i%50), func(*Item) (*Item, Op) {
					return &Item{Value: []byte("v")}, Replace
				})
				if err != nil {
					t.Error(err)
					return
				}
				got[w] = append(got[w], cas)
			}
		}()
	}
	wg.Wait()
	seen := make(map[uint64]bool, workers*per)
	for w, list := range got {
		for i, cas := range list {
			if seen[cas] {
				t.Fatalf("CAS %d handed out twice", cas)
			}
			seen[cas] = true
			if i > 0 && cas <= list[i-1] {
				t.Fatalf("worker %d: CAS %d after %d", w, cas, list[i-1])
			}
		}
	}
	// Uniques are dense: 1..n with none skipped.
	for c := uint64(1); c <= workers*per; c++ {
		if !seen[c] {
			t.Fatalf("CAS %d never handed out", c)
		}
	}
}

// TestMemoryBoundedUnderFlood stores far more than the limit and checks the accounted bytes after
// every store, then that the Go heap holds about the limit, not the flood.
func TestMemoryBoundedUnderFlood(t *testing.T) {
	const limit = 1 << 20
	s := New(Config{MemoryLimit: limit, MaxItemSize: 64 << 10, Shards: 8})
	r := rand.New(rand.NewPCG(1, 2))
	var stored int64
	for i := range 20000 {
		n := r.IntN(8 << 10)
		key := fmt.Sprintf("flood-%d", i)
		if _, err := s.Do(key, func(*Item) (*Item, Op) { return &Item{Value: make([]byte, n)}, Replace }); err != nil {
			t.Fatalf("store %d (%d bytes): %v", i, n, err)
		}
		stored += itemSize(key, make([]byte, n))
		if i%100 == 0 {
			if st := s.Stats(); st.Bytes > limit {
				t.Fatalf("after %d stores: %d bytes held, limit %d", i, st.Bytes, limit)
			}
		}
	}
	if stored < 50*limit {
		t.Fatalf("flood too small to prove anything: %d bytes", stored)
	}
	checkInvariants(t, s)
	st := s.Stats()
	if st.Bytes > limit || st.Evictions == 0 {
		t.Fatalf("stats %+v: want within %d bytes, with evictions", st, limit)
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	// The flood was ~80 MiB of values; the store may hold 1 MiB plus per-entry overhead. The
	// test binary's own heap is a few MiB.
	if ms.HeapAlloc > 16<<20 {
		t.Fatalf("heap %d MiB after a %d MiB flood into a %d MiB store", ms.HeapAlloc>>20, stored>>20, limit>>20)
	}
	runtime.KeepAlive(s)
}
