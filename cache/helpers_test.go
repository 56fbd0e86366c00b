package cache

import (
	"fmt"
	"hash/maphash"
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
		s.Close()
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

// checkInvariants verifies the shards' and the slabs' bookkeeping: every class list is well
// linked and holds exactly the items of the index, no item has more items ahead of it than bumps
// since its own, byte counts add up, each shard is within budget, each key sits in its own shard,
// every chunk in use is owned by the shard using it, and every class's chunks are either free or
// in use.
func checkInvariants(t *testing.T, s *Store) {
	t.Helper()
	sl := s.sl
	owned := make(map[uint32]int) // chunk ref -> shard id + 1, from the shards' side
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n := 0
		var bytes int64
		for cls := 1; cls < len(sh.lists); cls++ {
			l := &sh.lists[cls]
			var listed, requested int64
			var prev uint32
			for ref := l.head; ref != 0; ref = u32(sh.chunk(ref), hNext) {
				c := sh.chunk(ref)
				key := string(chunkKey(c))
				if u32(c, hPrev) != prev {
					t.Errorf("shard %d class %d: broken list links at %q", i, cls, key)
				}
				// What moveToFront relies on to leave items in place: each item ahead took a
				// bump since this one's.
				if age := int64(sh.bump - u32(c, hBump)); age < listed {
					t.Errorf("shard %d class %d: %q has %d items ahead, %d bumps since its own", i, cls, key, listed, age)
				}
				if sh.itemClass(ref) != cls {
					t.Errorf("shard %d: %q listed in class %d, it belongs in class %d", i, key, cls, sh.itemClass(ref))
				}
				if got := sh.lookup(key, maphash.String(s.seed, key)); got != ref {
					t.Errorf("shard %d: list item %q not in the index (found %d, want %d)", i, key, got, ref)
				}
				if s.shardFor(key) != sh {
					t.Errorf("key %q in shard %d, hashes elsewhere", key, i)
				}
				size := sh.itemSizeOf(ref)
				bytes += size
				requested += size
				listed++
				owned[ref] = i + 1
				if c[hBits]&bitChained != 0 {
					for r := u32(c, hdrSize+int(c[hKlen])); r != 0; r = u32(sh.chunk(r), 0) {
						owned[r] = i + 1
						if u32(sh.chunk(r), 4) != ref {
							t.Errorf("shard %d: %q continuation %d points at head %d", i, key, r, u32(sh.chunk(r), 4))
						}
					}
				}
				prev = ref
				if listed > int64(sh.count)+1 {
					t.Errorf("shard %d class %d: list longer than the index", i, cls)
					break
				}
			}
			if l.tail != prev {
				t.Errorf("shard %d class %d: tail %d, list ends at %d", i, cls, l.tail, prev)
			}
			if listed != l.n || requested != l.requested {
				t.Errorf("shard %d class %d: %d items of %d bytes listed, accounts say %d of %d", i, cls, listed, requested, l.n, l.requested)
			}
			n += int(listed)
		}
		indexed := 0
		sh.each(func(uint32) { indexed++ })
		if n != sh.count || indexed != sh.count {
			t.Errorf("shard %d: lists hold %d items, index %d, count %d", i, n, indexed, sh.count)
		}
		if bytes != sh.bytes {
			t.Errorf("shard %d: bytes %d, items add up to %d", i, sh.bytes, bytes)
		}
		if sh.bytes > sh.budget {
			t.Errorf("shard %d: bytes %d over budget %d", i, sh.bytes, sh.budget)
		}
		sh.mu.Unlock()
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	for cls := 1; cls < len(sl.classes); cls++ {
		c := &sl.classes[cls]
		used := 0
		free := make(map[uint32]bool, len(c.free))
		for _, ref := range c.free {
			if free[ref] {
				t.Errorf("class %d: chunk %d free twice", cls, ref)
			}
			free[ref] = true
		}
		for _, pn := range c.pages {
			p := &sl.pages[pn]
			if p.class != cls || p.size != c.size || len(p.owner) != c.perPage {
				t.Errorf("page %d in class %d says class %d size %d with %d chunks", pn, cls, p.class, p.size, len(p.owner))
			}
			pageUsed := 0
			for idx, o := range p.owner {
				ref := pn<<refChunkBits | uint32(idx)
				switch {
				case o == 0 && !free[ref] && !p.draining:
					t.Errorf("class %d: chunk %d neither free nor in use", cls, ref)
				case o != 0 && free[ref]:
					t.Errorf("class %d: chunk %d free and in use", cls, ref)
				case o != 0 && int(o&ownerShard) != owned[ref]:
					t.Errorf("class %d: chunk %d owned by shard %d, used by shard %d", cls, ref, int(o&ownerShard)-1, owned[ref]-1)
				}
				if o != 0 {
					pageUsed++
					delete(owned, ref)
				}
			}
			if pageUsed != p.used {
				t.Errorf("page %d: %d chunks in use, counted %d", pn, pageUsed, p.used)
			}
			used += pageUsed
		}
		if used != c.used {
			t.Errorf("class %d: %d chunks in use, counted %d", cls, used, c.used)
		}
	}
	if len(owned) != 0 {
		t.Errorf("%d chunks used by items are marked free", len(owned))
	}
}
