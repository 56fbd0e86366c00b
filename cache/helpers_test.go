package cache

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injected clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Unix(1_700_000_000, 0)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recHook records every hook call and checks, at the moment of the call, that the store holds
// the lock the contract promises.
type recHook struct {
	t *testing.T
	s *Store // set after New; nil disables the lock check

	mu       sync.Mutex
	changed  map[string]int
	order    []string
	flushed  []time.Time
	unlocked []string // calls that found their lock free
}

func newRecHook(t *testing.T) *recHook {
	return &recHook{t: t, changed: make(map[string]int)}
}

func (h *recHook) Changed(key string) {
	if h.s != nil {
		sh := h.s.shardFor(key)
		if sh.mu.TryLock() {
			sh.mu.Unlock()
			h.mu.Lock()
			h.unlocked = append(h.unlocked, "Changed "+key)
			h.mu.Unlock()
		}
	}
	h.mu.Lock()
	h.changed[key]++
	h.order = append(h.order, key)
	h.mu.Unlock()
}

func (h *recHook) Flushed(deadline time.Time) {
	if h.s != nil {
		for i := range h.s.shards {
			sh := &h.s.shards[i]
			if sh.mu.TryLock() {
				sh.mu.Unlock()
				h.mu.Lock()
				h.unlocked = append(h.unlocked, fmt.Sprintf("Flushed: shard %d", i))
				h.mu.Unlock()
			}
		}
	}
	h.mu.Lock()
	h.flushed = append(h.flushed, deadline)
	h.mu.Unlock()
}

// take returns the calls recorded since the last take and resets them.
func (h *recHook) take() (changed map[string]int, order []string, flushed []time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed, order, flushed = h.changed, h.order, h.flushed
	h.changed, h.order, h.flushed = make(map[string]int), nil, nil
	return changed, order, flushed
}

// expectChanged fails unless exactly the given keys (each once) were reported since the last take.
func (h *recHook) expectChanged(t *testing.T, keys ...string) {
	t.Helper()
	got, order, flushed := h.take()
	want := make(map[string]int)
	for _, k := range keys {
		want[k]++
	}
	if len(got) != len(want) {
		t.Fatalf("hook Changed calls %v, want each of %v once", order, keys)
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("hook Changed calls %v, want each of %v once", order, keys)
		}
	}
	if len(flushed) != 0 {
		t.Fatalf("unexpected hook Flushed calls %v", flushed)
	}
}

func (h *recHook) checkLocked(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.unlocked) > 0 {
		t.Fatalf("hook ran without the lock held: %v", h.unlocked)
	}
}

// newTestStore returns a store with a fake clock and a recording hook.
func newTestStore(t *testing.T, cfg Config) (*Store, *fakeClock, *recHook) {
	t.Helper()
	clk := newClock()
	h := newRecHook(t)
	cfg.Now = clk.Now
	cfg.Hook = h
	s := New(cfg)
	h.s = s
	t.Cleanup(func() {
		h.checkLocked(t)
		checkInvariants(t, s)
	})
	return s, clk, h
}

// set stores value under key with Replace and returns the CAS.
func set(t *testing.T, s *Store, key, value string, exptime int64) uint64 {
	t.Helper()
	cas, err := s.Do(key, func(*Item) (*Item, Op) {
		return &Item{Value: []byte(value), Exptime: exptime}, Replace
	})
	if err != nil {
		t.Fatalf("set %q: %v", key, err)
	}
	return cas
}

func get(s *Store, key string) (string, bool) {
	it, ok := s.Get(key)
	return string(it.Value), ok
}

func mustGet(t *testing.T, s *Store, key, want string) {
	t.Helper()
	got, ok := get(s, key)
	if !ok {
		t.Fatalf("get %q: miss, want %q", key, want)
	}
	if got != want {
		t.Fatalf("get %q = %q, want %q", key, got, want)
	}
}

func mustMiss(t *testing.T, s *Store, key string) {
	t.Helper()
	if got, ok := get(s, key); ok {
		t.Fatalf("get %q = %q, want miss", key, got)
	}
}

// checkInvariants verifies the shards' internal bookkeeping: map and list hold the same entries,
// byte counts add up, each shard is within budget and each key sits in its own shard.
func checkInvariants(t *testing.T, s *Store) {
	t.Helper()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n := 0
		var bytes int64
		for e := sh.lru.root.next; e != &sh.lru.root; e = e.next {
			n++
			if e.next.prev != e {
				t.Errorf("shard %d: broken list links at %q", i, e.key)
			}
			if sh.items[e.key] != e {
				t.Errorf("shard %d: list entry %q not in map", i, e.key)
			}
			if s.shardFor(e.key) != sh {
				t.Errorf("key %q in shard %d, hashes elsewhere", e.key, i)
			}
			if want := itemSize(e.key, e.item.Value); e.size != want {
				t.Errorf("shard %d: %q size %d, want %d", i, e.key, e.size, want)
			}
			bytes += e.size
			if n > len(sh.items)+1 {
				break
			}
		}
		if n != len(sh.items) {
			t.Errorf("shard %d: list has %d entries, map %d", i, n, len(sh.items))
		}
		if bytes != sh.bytes {
			t.Errorf("shard %d: bytes %d, items add up to %d", i, sh.bytes, bytes)
		}
		if sh.bytes > sh.budget {
			t.Errorf("shard %d: bytes %d over budget %d", i, sh.bytes, sh.budget)
		}
		sh.mu.Unlock()
	}
}
