package cache

import (
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDoOps(t *testing.T) {
	s, clk, h := newTestStore(t, Config{MemoryLimit: 1 << 20, Shards: 4})

	// Keep on an absent key: fn sees nil, nothing happens.
	cas, err := s.Do("k", func(cur *Item) (*Item, Op) {
		if cur != nil {
			t.Fatalf("absent key: cur = %+v, want nil", cur)
		}
		return nil, Keep
	})
	if err != nil || cas != 0 {
		t.Fatalf("Keep on absent: cas %d err %v, want 0, nil", cas, err)
	}
	h.expectChanged(t)
	mustMiss(t, s, "k")

	// Modify and Delete on an absent key change nothing either.
	for _, op := range []Op{Modify, Delete} {
		if cas, err := s.Do("k", func(*Item) (*Item, Op) { return nil, op }); err != nil || cas != 0 {
			t.Fatalf("%v on absent: cas %d err %v", op, cas, err)
		}
		h.expectChanged(t)
		mustMiss(t, s, "k")
	}

	// Replace stores a new item and assigns CAS and LastAccess.
	next := &Item{Value: []byte("v1"), Flags: 7, Fetched: false}
	cas, err = s.Do("k", func(*Item) (*Item, Op) { return next, Replace })
	if err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if cas == 0 || next.CAS != cas {
		t.Fatalf("Replace returned cas %d, next.CAS %d: want the same non-zero unique", cas, next.CAS)
	}
	h.expectChanged(t, "k")
	it, ok := s.Get("k")
	if !ok || string(it.Value) != "v1" || it.Flags != 7 || it.CAS != cas {
		t.Fatalf("after Replace: Get = %+v, %v", it, ok)
	}
	if it.LastAccess != clk.Now().Unix() {
		t.Fatalf("LastAccess %d, want store time %d", it.LastAccess, clk.Now().Unix())
	}

	// The stored item is a copy: changing the caller's struct does not reach the store.
	next.Flags = 99
	if it, _ := s.Get("k"); it.Flags != 7 {
		t.Fatalf("stored item aliases the caller's struct: flags %d", it.Flags)
	}

	// Keep may update access state, which persists; nothing is reported.
	clk.Advance(5 * time.Second)
	if _, err := s.Do("k", func(cur *Item) (*Item, Op) {
		cur.WinIssued = true
		cur.LastAccess = clk.Now().Unix()
		return nil, Keep
	}); err != nil {
		t.Fatalf("Keep: %v", err)
	}
	h.expectChanged(t)
	if it, _ := s.Get("k"); !it.WinIssued || it.LastAccess != clk.Now().Unix() {
		t.Fatalf("Keep lost access state: %+v", it)
	}

	// Modify changes the item in place, keeps the CAS and is reported.
	if cas, err := s.Do("k", func(cur *Item) (*Item, Op) {
		cur.Flags = 42
		cur.Stale = true
		return nil, Modify
	}); err != nil || cas != 0 {
		t.Fatalf("Modify: cas %d err %v, want 0, nil", cas, err)
	}
	h.expectChanged(t, "k")
	it, _ = s.Get("k")
	if it.Flags != 42 || !it.Stale || it.CAS != next.CAS {
		t.Fatalf("after Modify: %+v, want flags 42, stale, CAS %d", it, next.CAS)
	}

	// Replace of an existing item gets a new CAS; fn sees the old item.
	cas2, err := s.Do("k", func(cur *Item) (*Item, Op) {
		if cur == nil || string(cur.Value) != "v1" {
			t.Fatalf("Replace: cur = %+v, want v1", cur)
		}
		return &Item{Value: append(append([]byte(nil), cur.Value...), "+"...)}, Replace
	})
	if err != nil || cas2 <= cas {
		t.Fatalf("second Replace: cas %d err %v, want > %d", cas2, err, cas)
	}
	h.expectChanged(t, "k")
	mustGet(t, s, "k", "v1+")

	// Delete removes it and is reported.
	if cas, err := s.Do("k", func(*Item) (*Item, Op) { return nil, Delete }); err != nil || cas != 0 {
		t.Fatalf("Delete: cas %d err %v", cas, err)
	}
	h.expectChanged(t, "k")
	mustMiss(t, s, "k")
	if st := s.Stats(); st.CurrItems != 0 || st.Bytes != 0 || st.TotalItems != 2 {
		t.Fatalf("stats after delete: %+v, want 0 items, 0 bytes, 2 stored", st)
	}
}

func TestDoInvalidOp(t *testing.T) {
	s, _, h := newTestStore(t, Config{Shards: 2})
	set(t, s, "k", "v", 0)
	h.take()
	for name, fn := range map[string]func(*Item) (*Item, Op){
		"Replace nil": func(*Item) (*Item, Op) { return nil, Replace },
		"unknown op":  func(*Item) (*Item, Op) { return &Item{Value: []byte("x")}, Op(17) },
	} {
		if _, err := s.Do("k", fn); !errors.Is(err, ErrInvalidOp) {
			t.Errorf("%s: err %v, want ErrInvalidOp", name, err)
		}
	}
	h.expectChanged(t)
	mustGet(t, s, "k", "v")
}

func TestGetRecordsFetch(t *testing.T) {
	s, clk, _ := newTestStore(t, Config{Shards: 2})
	set(t, s, "k", "v", 0)
	stored := clk.Now().Unix()
	clk.Advance(3 * time.Second)

	// The first Get shows the state before it: never fetched, last access at store.
	it, ok := s.Get("k")
	if !ok || it.Fetched || it.LastAccess != stored {
		t.Fatalf("first Get = %+v, %v; want unfetched, LastAccess %d", it, ok, stored)
	}
	clk.Advance(2 * time.Second)
	it, _ = s.Get("k")
	if !it.Fetched || it.LastAccess != stored+3 {
		t.Fatalf("second Get = %+v; want fetched, LastAccess %d", it, stored+3)
	}
	// A new store clears the fetch state (the server builds a fresh Item).
	set(t, s, "k", "w", 0)
	if it, _ := s.Get("k"); it.Fetched || it.LastAccess != clk.Now().Unix() {
		t.Fatalf("Get after re-store = %+v; want unfetched, LastAccess now", it)
	}
}

func TestCASUniqueAndMonotonic(t *testing.T) {
	s, _, _ := newTestStore(t, Config{Shards: 8})
	var last uint64
	for i := range 1000 {
		cas := set(t, s, fmt.Sprintf("k%d", i%37), "v", 0)
		if i == 0 && cas != 1 {
			t.Fatalf("first CAS %d, want 1", cas)
		}
		if cas <= last {
			t.Fatalf("CAS %d after %d: not increasing", cas, last)
		}
		last = cas
	}
	// Modify and Keep do not consume uniques.
	it, _ := s.Get("k0")
	if _, err := s.Do("k0", func(cur *Item) (*Item, Op) { cur.Flags = 1; return nil, Modify }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get("k0"); got.CAS != it.CAS {
		t.Fatalf("Modify changed CAS %d to %d", it.CAS, got.CAS)
	}
	if cas := set(t, s, "k0", "v", 0); cas != last+1 {
		t.Fatalf("CAS after Modify %d, want %d", cas, last+1)
	}
}

func TestExptimeConversion(t *testing.T) {
	s, clk, _ := newTestStore(t, Config{})
	now := clk.Now().Unix()
	for _, tc := range []struct {
		raw, want int64
	}{
		{0, 0},
		{-1, now - 1},
		{-1000000, now - 1},
		{1, now + 1},
		{100, now + 100},
		{maxDelta, now + maxDelta},         // 30 days is still relative
		{maxDelta + 1, maxDelta + 1},       // one more is an absolute time in 1970
		{now + 3600, now + 3600},           // absolute, in the future
		{now - 3600, now - 3600},           // absolute, in the past
		{1 << 40, 1 << 40},                 // far future stays absolute
		{-(1 << 62), now - 1},              // huge negative
		{maxDelta - 1, now + maxDelta - 1}, // just below the boundary
	} {
		if got := s.Exptime(tc.raw); got != tc.want {
			t.Errorf("Exptime(%d) = %d, want %d", tc.raw, got, tc.want)
		}
	}
	// At the epoch a negative exptime must still be in the past and not 0 (never).
	epoch := New(Config{Now: func() time.Time { return time.Unix(1, 0) }})
	if got := epoch.Exptime(-1); got == 0 || got > 1 {
		t.Errorf("Exptime(-1) at unix 1 = %d, want a non-zero time <= 1", got)
	}
}

func TestExpiry(t *testing.T) {
	s, clk, h := newTestStore(t, Config{Shards: 4})

	set(t, s, "rel", "v", s.Exptime(10))
	set(t, s, "never", "v", s.Exptime(0))
	set(t, s, "neg", "v", s.Exptime(-1))
	set(t, s, "abs-past", "v", s.Exptime(maxDelta+1))
	set(t, s, "abs-future", "v", s.Exptime(clk.Now().Unix()+20))
	set(t, s, "30days", "v", s.Exptime(maxDelta))
	h.take()

	// Negative and absolute-past items are stored but never readable; finding them reports them.
	mustMiss(t, s, "neg")
	mustMiss(t, s, "abs-past")
	h.expectChanged(t, "neg", "abs-past")

	clk.Advance(9 * time.Second)
	mustGet(t, s, "rel", "v")
	clk.Advance(1 * time.Second) // exptime <= now: expired
	mustMiss(t, s, "rel")
	h.expectChanged(t, "rel")
	mustMiss(t, s, "rel") // already gone: reported once only
	h.expectChanged(t)

	// Do sees nil for an expired item, which is removed (hook runs) before fn.
	clk.Advance(10 * time.Second)
	if _, err := s.Do("abs-future", func(cur *Item) (*Item, Op) {
		if cur != nil {
			t.Fatalf("Do on expired item: cur = %+v", cur)
		}
		if n := h.changed["abs-future"]; n != 1 {
			t.Fatalf("hook ran %d times before fn, want 1", n)
		}
		return nil, Keep
	}); err != nil {
		t.Fatal(err)
	}
	h.expectChanged(t, "abs-future")

	clk.Advance(maxDelta*time.Second - 21*time.Second)
	mustGet(t, s, "30days", "v")
	clk.Advance(time.Second)
	mustMiss(t, s, "30days")
	mustGet(t, s, "never", "v")
	h.expectChanged(t, "30days")

	// rel and 30days were fetched before they expired; neg, abs-past and abs-future never were.
	st := s.Stats()
	if st.Expired != 5 || st.ExpiredUnfetched != 3 || st.CurrItems != 1 {
		t.Fatalf("stats %+v: want Expired 5, ExpiredUnfetched 3, CurrItems 1", st)
	}
}

func TestModifyExpiryTouch(t *testing.T) {
	s, clk, h := newTestStore(t, Config{Shards: 1})
	set(t, s, "k", "v", s.Exptime(5))
	h.take()
	// touch: push the expiry out.
	if _, err := s.Do("k", func(cur *Item) (*Item, Op) { cur.Exptime = s.Exptime(100); return nil, Modify }); err != nil {
		t.Fatal(err)
	}
	h.expectChanged(t, "k")
	clk.Advance(50 * time.Second)
	mustGet(t, s, "k", "v")
	// touch with a negative exptime expires it.
	if _, err := s.Do("k", func(cur *Item) (*Item, Op) { cur.Exptime = s.Exptime(-1); return nil, Modify }); err != nil {
		t.Fatal(err)
	}
	h.expectChanged(t, "k")
	mustMiss(t, s, "k")
	h.expectChanged(t, "k")
}

func TestModifyResize(t *testing.T) {
	s, _, h := newTestStore(t, Config{Shards: 1, MemoryLimit: 4096, MaxItemSize: 1024})
	set(t, s, "k", "v", 0)
	h.take()
	// A Modify that swaps the value is accounted for.
	if _, err := s.Do("k", func(cur *Item) (*Item, Op) { cur.Value = make([]byte, 500); return nil, Modify }); err != nil {
		t.Fatal(err)
	}
	h.expectChanged(t, "k")
	if st := s.Stats(); st.Bytes != uint64(itemSize("k", make([]byte, 500))) {
		t.Fatalf("bytes %d after resize, want %d", st.Bytes, itemSize("k", make([]byte, 500)))
	}
	// Growing past MaxItemSize fails like a store and removes the item.
	_, err := s.Do("k", func(cur *Item) (*Item, Op) { cur.Value = make([]byte, 2000); return nil, Modify })
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized Modify: err %v, want ErrTooLarge", err)
	}
	h.expectChanged(t, "k")
	mustMiss(t, s, "k")
	if st := s.Stats(); st.Bytes != 0 || st.CurrItems != 0 {
		t.Fatalf("stats after failed Modify %+v, want empty", st)
	}
}

func TestTooLarge(t *testing.T) {
	const max = 1000
	s, _, h := newTestStore(t, Config{Shards: 1, MemoryLimit: 10 * max, MaxItemSize: max})
	key := "k"
	fits := strings.Repeat("x", max-len(key)-ItemOverhead)

	set(t, s, key, "old", 0)
	set(t, s, key, fits, 0) // exactly MaxItemSize is accepted
	mustGet(t, s, key, fits)
	h.take()

	_, err := s.Do(key, func(*Item) (*Item, Op) { return &Item{Value: []byte(fits + "y")}, Replace })
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("one byte over: err %v, want ErrTooLarge", err)
	}
	h.expectChanged(t, key)
	mustMiss(t, s, key) // the old item is gone, as in memcached

	// Too large with no old item: no change to report.
	if _, err := s.Do("other", func(*Item) (*Item, Op) { return &Item{Value: make([]byte, max)}, Replace }); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err %v, want ErrTooLarge", err)
	}
	h.expectChanged(t)
	if st := s.Stats(); st.CurrItems != 0 || st.Bytes != 0 {
		t.Fatalf("stats %+v, want empty", st)
	}
}

func TestNoMemory(t *testing.T) {
	// Two shards of 1000 bytes each; items up to 4000 pass the size check but not the budget.
	s, _, h := newTestStore(t, Config{Shards: 2, MemoryLimit: 2000, MaxItemSize: 4000})
	set(t, s, "k", "old", 0)
	h.take()
	_, err := s.Do("k", func(*Item) (*Item, Op) { return &Item{Value: make([]byte, 1500)}, Replace })
	if !errors.Is(err, ErrNoMemory) {
		t.Fatalf("err %v, want ErrNoMemory", err)
	}
	h.expectChanged(t, "k")
	mustMiss(t, s, "k")
	if st := s.Stats(); st.Evictions != 0 {
		t.Fatalf("a store that cannot fit evicted %d items", st.Evictions)
	}
}

func TestLRUEviction(t *testing.T) {
	// One shard holding exactly ten items of this size.
	const val = "0123456789"
	size := itemSize("k00", []byte(val))
	s, _, h := newTestStore(t, Config{Shards: 1, MemoryLimit: 10 * size})
	for i := range 10 {
		set(t, s, fmt.Sprintf("k%02d", i), val, 0)
	}
	h.take()
	if st := s.Stats(); st.Bytes != uint64(10*size) || st.Evictions != 0 {
		t.Fatalf("full: %+v", st)
	}

	// Use k0 (Get) and k1 (Keep via Do): the LRU tail is now k2.
	s.Get("k00")
	if _, err := s.Do("k01", func(*Item) (*Item, Op) { return nil, Keep }); err != nil {
		t.Fatal(err)
	}
	set(t, s, "k10", val, 0)
	h.expectChanged(t, "k02", "k10")
	mustMiss(t, s, "k02")

	set(t, s, "k11", val, 0)
	set(t, s, "k12", val, 0)
	h.expectChanged(t, "k03", "k04", "k11", "k12")

	// Modify bumps too: k5 survives, k6 goes.
	if _, err := s.Do("k05", func(cur *Item) (*Item, Op) { cur.Flags = 1; return nil, Modify }); err != nil {
		t.Fatal(err)
	}
	h.take()
	set(t, s, "k13", val, 0)
	h.expectChanged(t, "k06", "k13")

	// An item the size of three evicts three, oldest first.
	set(t, s, "k14", strings.Repeat("x", 3*int(size)-len("k14")-ItemOverhead), 0)
	h.expectChanged(t, "k07", "k08", "k09", "k14")

	for _, k := range []string{"k00", "k01", "k05", "k10", "k11", "k12", "k13", "k14"} {
		if _, ok := s.Get(k); !ok {
			t.Errorf("%s was evicted; it was used more recently than the evicted ones", k)
		}
	}
	st := s.Stats()
	if st.Evictions != 7 || st.EvictedUnfetched != 7 || st.Bytes != uint64(10*size) {
		t.Fatalf("stats %+v: want 7 evictions, all unfetched, %d bytes", st, 10*size)
	}

	// Evicting fetched items does not count as unfetched. The 8 left were all just fetched, so
	// each gets a second chance before ten new items, never fetched, go: twenty new items
	// evict the 8 and the first ten of their own.
	for i := range 20 {
		set(t, s, fmt.Sprintf("n%02d", i), val, 0)
	}
	for _, k := range []string{"k00", "k01", "k05", "k10", "k11", "k12", "k13", "k14", "n00", "n09"} {
		mustMiss(t, s, k)
	}
	if st := s.Stats(); st.Evictions != 7+8+10 || st.EvictedUnfetched != 7+10 {
		t.Fatalf("stats %+v: want 25 evictions, 17 of them unfetched", st)
	}
}

func TestEvictionReclaimsExpiredFirst(t *testing.T) {
	const val = "0123456789"
	size := itemSize("k0", []byte(val))
	s, clk, h := newTestStore(t, Config{Shards: 1, MemoryLimit: 4 * size})
	set(t, s, "k0", val, 0)
	set(t, s, "k1", val, 0)
	set(t, s, "k2", val, s.Exptime(1)) // near the tail, expiring
	set(t, s, "k3", val, 0)
	clk.Advance(2 * time.Second)
	h.take()
	set(t, s, "k4", val, 0) // k2's memory is reclaimed; k0, the LRU tail, survives
	h.expectChanged(t, "k2", "k4")
	mustGet(t, s, "k0", val)
	st := s.Stats()
	if st.Reclaimed != 1 || st.Evictions != 0 || st.Expired != 1 || st.ExpiredUnfetched != 1 {
		t.Fatalf("stats %+v: want 1 reclaimed, 0 evictions", st)
	}
}

func TestFlushAllNow(t *testing.T) {
	s, clk, h := newTestStore(t, Config{Shards: 4})
	for i := range 20 {
		set(t, s, fmt.Sprintf("k%d", i), "v", 0)
	}
	h.take()
	s.FlushAll(0)
	_, _, flushed := h.take()
	if len(flushed) != 1 || !flushed[0].Equal(clk.Now()) {
		t.Fatalf("Flushed calls %v, want one with deadline now %v", flushed, clk.Now())
	}
	// Stored in the same clock tick as the flush, after it: live.
	set(t, s, "after", "v", 0)
	h.take()
	for i := range 20 {
		mustMiss(t, s, fmt.Sprintf("k%d", i))
	}
	mustGet(t, s, "after", "v")
	changed, _, _ := h.take()
	if len(changed) != 20 {
		t.Fatalf("hook reported %d flushed items as found, want 20", len(changed))
	}
	// Do sees nil for a flushed key; a new store there is live.
	set(t, s, "k0", "new", 0)
	mustGet(t, s, "k0", "new")
	if st := s.Stats(); st.Flushes != 1 || st.CurrItems != 2 {
		t.Fatalf("stats %+v: want 1 flush, 2 items", st)
	}
	// A negative delay is "now" too.
	s.FlushAll(-time.Second)
	mustMiss(t, s, "k0")
	mustMiss(t, s, "after")
}

func TestFlushAllDelayed(t *testing.T) {
	s, clk, h := newTestStore(t, Config{Shards: 4})
	set(t, s, "before", "v", 0)
	start := clk.Now()
	s.FlushAll(10 * time.Second)
	_, _, flushed := h.take()
	if len(flushed) != 1 || !flushed[0].Equal(start.Add(10*time.Second)) {
		t.Fatalf("Flushed calls %v, want deadline %v", flushed, start.Add(10*time.Second))
	}

	clk.Advance(5 * time.Second)
	set(t, s, "during", "v", 0) // stored before the deadline: flushed at it too
	mustGet(t, s, "before", "v")
	clk.Advance(5*time.Second - time.Nanosecond)
	mustGet(t, s, "before", "v")
	mustGet(t, s, "during", "v")
	h.take()

	clk.Advance(time.Nanosecond) // at the deadline
	mustMiss(t, s, "before")
	mustMiss(t, s, "during")
	h.expectChanged(t, "before", "during")
	set(t, s, "after", "v", 0) // stored at the deadline: counts as before it (<=)
	mustMiss(t, s, "after")
	clk.Advance(time.Second)
	set(t, s, "later", "v", 0)
	mustGet(t, s, "later", "v")

	// A later delayed flush must not revive what the passed deadline flushed.
	set(t, s, "x", "v", 0)
	clk.Advance(time.Second)
	s.FlushAll(0) // now
	clk.Advance(time.Second)
	set(t, s, "y", "v", 0)
	s.FlushAll(time.Hour)
	mustMiss(t, s, "x")
	mustGet(t, s, "y", "v")

	// A later FlushAll replaces a pending one (memcached keeps one oldest_live).
	s.FlushAll(10 * time.Second)
	clk.Advance(10 * time.Second)
	mustMiss(t, s, "y")
	clk.Advance(time.Second)
	set(t, s, "z", "v", 0)
	clk.Advance(2 * time.Hour)
	mustGet(t, s, "z", "v")
	if st := s.Stats(); st.Flushes != 4 {
		t.Fatalf("Flushes %d, want 4", st.Flushes)
	}
}

func TestFlushedItemsReclaimedBySweepAndEviction(t *testing.T) {
	const val = "0123456789"
	size := itemSize("k0", []byte(val))
	s, _, h := newTestStore(t, Config{Shards: 1, MemoryLimit: 4 * size})
	for i := range 4 {
		set(t, s, fmt.Sprintf("k%d", i), val, 0)
	}
	s.FlushAll(0)
	h.take()
	set(t, s, "kn", val, 0) // same size as the others: one reclaim makes room
	h.expectChanged(t, "k0", "kn")
	if st := s.Stats(); st.Reclaimed != 1 || st.Evictions != 0 {
		t.Fatalf("stats %+v: want the flushed tail reclaimed, no eviction", st)
	}
	if n := s.Sweep(100); n != 3 {
		t.Fatalf("Sweep removed %d, want the 3 flushed items", n)
	}
	h.expectChanged(t, "k1", "k2", "k3")
	if st := s.Stats(); st.CurrItems != 1 {
		t.Fatalf("CurrItems %d after sweep, want 1", st.CurrItems)
	}
}

func TestSweep(t *testing.T) {
	s, clk, h := newTestStore(t, Config{Shards: 8})
	for i := range 100 {
		exp := int64(0)
		if i%2 == 0 {
			exp = s.Exptime(10)
		}
		set(t, s, fmt.Sprintf("k%d", i), "v", exp)
	}
	h.take()
	if n := s.Sweep(1000); n != 0 {
		t.Fatalf("Sweep before expiry removed %d", n)
	}
	clk.Advance(10 * time.Second)
	if n := s.Sweep(0); n != 0 {
		t.Fatalf("Sweep(0) removed %d", n)
	}
	// A bounded sweep examines at most ceil(n/shards) per shard.
	if n := s.Sweep(8); n > 8 {
		t.Fatalf("Sweep(8) removed %d items", n)
	}
	total := 0
	for range 50 {
		total += s.Sweep(8)
	}
	total += s.Sweep(1000)
	changed, _, _ := h.take()
	if st := s.Stats(); st.CurrItems != 50 || st.Expired != 50 {
		t.Fatalf("stats %+v: want 50 left, 50 expired", st)
	}
	if len(changed) != 50 {
		t.Fatalf("hook saw %d expired keys, want 50", len(changed))
	}
	for k, n := range changed {
		if n != 1 {
			t.Fatalf("hook saw %s %d times", k, n)
		}
	}
}

func TestDefaultShards(t *testing.T) {
	for _, tc := range []struct {
		cfg        Config
		wantShards int
		wantLimit  int64
	}{
		{Config{}, 16, DefaultMemoryLimit}, // 64 MiB / 16 = 4 x 1 MiB items
		{Config{MemoryLimit: 1 << 30}, 64, 1 << 30},
		{Config{MemoryLimit: 1 << 20}, 1, 1 << 20},
		{Config{MemoryLimit: 1 << 20, MaxItemSize: 1024}, 64, 1 << 20},
		{Config{Shards: 3, MemoryLimit: 3000}, 3, 3000},
	} {
		s := New(tc.cfg)
		if len(s.shards) != tc.wantShards || s.Stats().LimitMaxBytes != tc.wantLimit {
			t.Errorf("New(%+v): %d shards, limit %d; want %d, %d", tc.cfg, len(s.shards), s.Stats().LimitMaxBytes, tc.wantShards, tc.wantLimit)
		}
		// The largest accepted item must fit a shard.
		if b := s.shards[0].budget; b < s.maxItemSize && tc.cfg.Shards == 0 && tc.cfg.MemoryLimit >= s.maxItemSize {
			t.Errorf("New(%+v): shard budget %d below max item %d", tc.cfg, b, s.maxItemSize)
		}
	}
}

func TestKeys(t *testing.T) {
	s, _, _ := newTestStore(t, Config{Shards: 4})
	want := map[string]bool{"a": true, "b": true, "c": true}
	for k := range want {
		set(t, s, k, "v", 0)
	}
	keys := s.Keys()
	if len(keys) != len(want) {
		t.Fatalf("Keys = %v", keys)
	}
	for _, k := range keys {
		if !want[k] {
			t.Fatalf("Keys = %v", keys)
		}
	}
}

// A fn may hand back the live item itself for Replace (a rewrite in place of a fresh Item).
func TestReplaceWithCur(t *testing.T) {
	s, _, h := newTestStore(t, Config{Shards: 2})
	first := set(t, s, "k", "v", 0)
	h.take()
	cas, err := s.Do("k", func(cur *Item) (*Item, Op) {
		cur.Value = []byte("longer value")
		cur.Flags = 3
		return cur, Replace
	})
	if err != nil || cas <= first {
		t.Fatalf("Replace with cur: cas %d err %v, want > %d", cas, err, first)
	}
	h.expectChanged(t, "k")
	it, _ := s.Get("k")
	if string(it.Value) != "longer value" || it.Flags != 3 || it.CAS != cas {
		t.Fatalf("after Replace with cur: %+v", it)
	}
	if st := s.Stats(); st.Bytes != uint64(itemSize("k", []byte("longer value"))) {
		t.Fatalf("bytes %d, want %d", st.Bytes, itemSize("k", []byte("longer value")))
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{Keep: "Keep", Modify: "Modify", Replace: "Replace", Delete: "Delete", Install: "Install", Op(9): "Op(invalid)"} {
		if got := op.String(); got != want {
			t.Errorf("Op(%d).String() = %q, want %q", int(op), got, want)
		}
	}
}

// TestRecordFetch: a fetch answered elsewhere (the kernel cache) counts as a fetch for the LRU,
// the fetched flag and the last access time, like Get; a missing key is ignored and an expired
// one removed.
func TestRecordFetch(t *testing.T) {
	const val = "0123456789"
	size := itemSize("k0", []byte(val))
	s, clk, h := newTestStore(t, Config{Shards: 1, MemoryLimit: 3 * size})
	for _, k := range []string{"k0", "k1", "k2"} {
		set(t, s, k, val, 0)
	}
	h.take()
	clk.Advance(7 * time.Second)
	s.RecordFetch("k0") // k0 was the LRU tail; k1 is now
	s.RecordFetch("absent")
	set(t, s, "k3", val, 0)
	h.expectChanged(t, "k1", "k3")
	it, ok := s.Get("k0")
	if !ok {
		t.Fatal("k0 was evicted although its fetch was recorded after k1 and k2 were stored")
	}
	if !it.Fetched || it.LastAccess != clk.Now().Unix() {
		t.Fatalf("k0 after RecordFetch: fetched %v, last access %d, want true, %d", it.Fetched, it.LastAccess, clk.Now().Unix())
	}
	if st := s.Stats(); st.EvictedUnfetched != 1 || st.CurrItems != 3 {
		t.Fatalf("stats %+v: want one unfetched eviction (k1), 3 items", st)
	}

	set(t, s, "short", val, clk.Now().Unix()+1)
	h.take()
	clk.Advance(2 * time.Second)
	s.RecordFetch("short")
	h.expectChanged(t, "short")
	mustMiss(t, s, "short")
}

func TestRaiseCAS(t *testing.T) {
	s := New(Config{})
	if _, err := s.Do("moved", func(*Item) (*Item, Op) { return &Item{Value: []byte("v"), CAS: 500}, Install }); err != nil {
		t.Fatal(err)
	}
	s.RaiseCAS(500)
	s.RaiseCAS(7) // never lowers
	cas, err := s.Do("moved", func(*Item) (*Item, Op) { return &Item{Value: []byte("w")}, Replace })
	if err != nil {
		t.Fatal(err)
	}
	if cas != 501 {
		t.Fatalf("CAS after RaiseCAS(500): %d, want 501", cas)
	}
}

// lruOrder returns the keys of key's class list in key's shard, most recently used first.
func lruOrder(s *Store, key string) []string {
	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	h := maphash.String(s.seed, key)
	l := &sh.lists[sh.class(sh.lookup(key, h))]
	var keys []string
	for ref := l.head; ref != 0; ref = u32(sh.chunk(ref), hNext) {
		keys = append(keys, string(chunkKey(sh.chunk(ref))))
	}
	return keys
}

// TestLRUSecondChance: a read, or a set rewriting the item in place, leaves the list as it is and
// marks the item active; eviction moves an active tail to the head, clearing the mark, and takes
// the next item instead. A write that keeps the item (Keep, Modify) moves it to the head unless
// it is in the front quarter of its class list.
func TestLRUSecondChance(t *testing.T) {
	const val = "0123456789"
	size := itemSize("k00", []byte(val))
	s, _, h := newTestStore(t, Config{Shards: 1, MemoryLimit: 100 * size})
	var want []string // head first
	for i := range 100 {
		k := fmt.Sprintf("k%02d", i)
		set(t, s, k, val, 0)
		want = append([]string{k}, want...)
	}
	h.take()
	for _, k := range []string{"k00", "k50", "k99"} {
		mustGet(t, s, k, val)
	}
	set(t, s, "k01", val, 0) // rewritten in place: marked like a read
	h.take()
	if got := lruOrder(s, "k00"); !slices.Equal(got, want) {
		t.Fatalf("reads and an in-place set reordered the list:\n got %v\nwant %v", got, want)
	}
	// The store is full: n00 goes in at the head; the tail k00 and then k01 were read, so both
	// move ahead of it, and k02 is evicted.
	set(t, s, "n00", val, 0)
	h.expectChanged(t, "k02", "n00")
	want = slices.DeleteFunc(want, func(k string) bool { return k == "k00" || k == "k01" || k == "k02" })
	want = append([]string{"k01", "k00", "n00"}, want...)
	if got := lruOrder(s, "k00"); !slices.Equal(got, want) {
		t.Fatalf("after an eviction:\n got %v\nwant %v", got, want)
	}
	// Their marks are spent: once they reach the tail again they go like any other item.
	for i := 1; i <= 99; i++ {
		set(t, s, fmt.Sprintf("n%02d", i), val, 0)
	}
	for _, k := range []string{"k00", "k01", "k02", "k98", "n00", "n01"} {
		mustMiss(t, s, k)
	}
	// k50 and k99, read once, each had their second chance when they reached the tail.
	mustGet(t, s, "k50", val)
	mustGet(t, s, "k99", val)
	h.take()

	// Writes: positions 0 to 24 of 100 had fewer than 25 items pushed ahead since their store.
	s2, _, _ := newTestStore(t, Config{Shards: 1, MemoryLimit: 100 * size})
	want = nil
	for i := range 100 {
		k := fmt.Sprintf("k%02d", i)
		set(t, s2, k, val, 0)
		want = append([]string{k}, want...)
	}
	keep := func(k string) {
		t.Helper()
		if _, err := s2.Do(k, func(*Item) (*Item, Op) { return nil, Keep }); err != nil {
			t.Fatal(err)
		}
	}
	for i := 99; i >= 75; i-- {
		keep(fmt.Sprintf("k%02d", i))
	}
	if got := lruOrder(s2, "k00"); !slices.Equal(got, want) {
		t.Fatalf("writes in the front quarter reordered the list:\n got %v\nwant %v", got, want)
	}
	keep("k74") // position 25: it moves to the head
	want = append([]string{"k74"}, slices.DeleteFunc(want, func(k string) bool { return k == "k74" })...)
	if got := lruOrder(s2, "k00"); !slices.Equal(got, want) {
		t.Fatalf("after a write of k74:\n got %v\nwant %v", got, want)
	}
}

// TestView: View shows what Get shows, without a copy of the value, records the fetch the same
// way, and neither calls fn for a missing or expired item nor leaves the expired one behind.
func TestView(t *testing.T) {
	s, clk, h := newTestStore(t, Config{Shards: 2})
	cas := set(t, s, "k", "value", 0)
	set(t, s, "e", "gone", s.Exptime(1))
	stored := clk.Now().Unix()
	clk.Advance(3 * time.Second)
	h.take()

	var seen []Item
	view := func(key string) bool {
		return s.View(key, func(it *Item) {
			c := *it
			c.Value = append([]byte(nil), it.Value...)
			seen = append(seen, c)
		})
	}
	if !view("k") || !view("k") {
		t.Fatal("View missed a live item")
	}
	if len(seen) != 2 {
		t.Fatalf("fn called %d times for two hits", len(seen))
	}
	first, second := seen[0], seen[1]
	if string(first.Value) != "value" || first.CAS != cas || first.Fetched || first.LastAccess != stored {
		t.Fatalf("first View = %+v; want the stored item, unfetched, LastAccess %d", first, stored)
	}
	if !second.Fetched || second.LastAccess != stored+3 {
		t.Fatalf("second View = %+v; want fetched, LastAccess %d", second, stored+3)
	}
	if it, _ := s.Get("k"); !it.Fetched || string(it.Value) != "value" {
		t.Fatalf("Get after View = %+v", it)
	}
	seen = nil
	if view("missing") || view("e") || len(seen) != 0 {
		t.Fatalf("View of a missing or expired key: fn saw %v", seen)
	}
	h.expectChanged(t, "e")
	var hits uint64
	for _, c := range s.Classes() {
		hits += c.GetHits
	}
	if st := s.Stats(); hits != 3 || st.CurrItems != 1 {
		t.Fatalf("after two Views and a Get of a live item: %d hits, %d items; want 3 and 1", hits, st.CurrItems)
	}
}

// TestCountHits: what fn records with Count is counted in the item's class, once per Do; an
// incr or decr that stores is not a set command, a refused cas is one, as memcached counts.
func TestCountHits(t *testing.T) {
	s, _, _ := newTestStore(t, Config{Shards: 2})
	set(t, s, "n", "10", 0)
	do := func(h Hit, op Op) {
		t.Helper()
		if _, err := s.Do("n", func(cur *Item) (*Item, Op) {
			cur.Count(TouchHit) // the last Count wins
			cur.Count(h)
			return &Item{Value: []byte("11")}, op
		}); err != nil {
			t.Fatal(err)
		}
	}
	do(IncrHit, Replace)
	do(DecrHit, Replace)
	do(CASBadval, Keep)
	do(TouchHit, Keep)
	if _, err := s.Do("absent", func(cur *Item) (*Item, Op) { return nil, Keep }); err != nil {
		t.Fatal(err)
	}
	var got ClassStats
	for _, c := range s.Classes() {
		if c.Items > 0 {
			got = c
		}
	}
	want := [numHits]uint64{IncrHit: 1, DecrHit: 1, CASBadval: 1, TouchHit: 1}
	if got.Hits != want || got.CmdSet != 2 { // the first set and the refused cas
		t.Fatalf("class %d: hits %v, cmd_set %d; want %v and 2", got.Class, got.Hits, got.CmdSet, want)
	}
}
