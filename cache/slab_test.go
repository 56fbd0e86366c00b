package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestClassSizes(t *testing.T) {
	// memcached 1.6 -f 1.25 -n 48 (its defaults) starts 96 120 152 192 240 304 and ends with
	// half a page; the conformance test in server/ compares the whole table with the real one.
	sizes := classSizes(DefaultGrowthFactor, DefaultMinChunk)
	if want := []int{0, 96, 120, 152, 192, 240, 304}; !slices.Equal(sizes[:len(want)], want) {
		t.Fatalf("classes start %v, want %v", sizes[:len(want)], want)
	}
	if last := sizes[len(sizes)-1]; last != PageSize/2 || len(sizes)-1 != 39 {
		t.Fatalf("%d classes, last %d; want 39, the last %d", len(sizes)-1, last, PageSize/2)
	}
	for i := 2; i < len(sizes); i++ {
		if sizes[i]%chunkAlign != 0 || sizes[i] <= sizes[i-1] {
			t.Fatalf("class %d size %d after %d", i, sizes[i], sizes[i-1])
		}
	}
	// A larger factor gives fewer classes; -n moves the first.
	if got := classSizes(2, 100); got[1] != 152 || len(got) >= len(sizes) {
		t.Fatalf("-f 2 -n 100: %v", got)
	}
	// The first chunk never goes below what a ref can index.
	if got := classSizes(1.25, 1); got[1] < minChunkSize {
		t.Fatalf("-n 1: first chunk %d below %d", got[1], minChunkSize)
	}
}

// Items larger than the largest chunk are chained; they read back whole, resize in place and
// free every chunk when they go.
func TestChainedItems(t *testing.T) {
	s, _, h := newTestStore(t, Config{Shards: 2, MemoryLimit: 64 << 20, MaxItemSize: 4 << 20})
	r := rand.New(rand.NewPCG(3, 4))
	vals := map[string][]byte{}
	for i, n := range []int{PageSize/2 - hdrSize - 2, PageSize/2 - hdrSize - 1, PageSize / 2, PageSize, 3*PageSize + 17, 0, 1} {
		key := fmt.Sprintf("big%d", i)
		v := make([]byte, n)
		for j := range v {
			v[j] = byte(r.Uint32())
		}
		vals[key] = v
		if _, err := s.Do(key, func(*Item) (*Item, Op) { return &Item{Value: v, Flags: uint32(n)}, Replace }); err != nil {
			t.Fatalf("store %d bytes: %v", n, err)
		}
	}
	for key, v := range vals {
		it, ok := s.Get(key)
		if !ok || !bytes.Equal(it.Value, v) || it.Flags != uint32(len(v)) {
			t.Fatalf("%s: got %d bytes (ok %v), want %d", key, len(it.Value), ok, len(v))
		}
	}
	checkInvariants(t, s)
	// Append to a chained item through Replace, sharing cur's bytes, then shrink it by Modify.
	if _, err := s.Do("big4", func(cur *Item) (*Item, Op) {
		return &Item{Value: append(cur.Value, "tail"...)}, Replace
	}); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, "big4", string(vals["big4"])+"tail")
	if _, err := s.Do("big4", func(cur *Item) (*Item, Op) { cur.Value = cur.Value[:10]; return nil, Modify }); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, "big4", string(vals["big4"][:10]))
	// A Modify that leaves a chained value unchanged keeps it.
	if _, err := s.Do("big3", func(cur *Item) (*Item, Op) { cur.Flags = 1; return nil, Modify }); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, "big3", string(vals["big3"]))
	checkInvariants(t, s)
	for key := range vals {
		s.Do(key, func(*Item) (*Item, Op) { return nil, Delete })
	}
	h.take()
	for _, c := range s.Classes() {
		if c.UsedChunks != 0 || c.Items != 0 {
			t.Fatalf("class %d after deleting everything: %+v", c.Class, c)
		}
	}
}

// A value handed back by Do shares the store's memory only until Do returns; Get's is the
// caller's own, whatever happens to the item afterwards.
func TestGetValueOwned(t *testing.T) {
	s, _, _ := newTestStore(t, Config{Shards: 1})
	set(t, s, "k", "first", 0)
	it, _ := s.Get("k")
	set(t, s, "k", "other", 0)
	s.Do("k", func(*Item) (*Item, Op) { return nil, Delete })
	set(t, s, "k2", "xxxxx", 0) // likely the same chunk
	if string(it.Value) != "first" {
		t.Fatalf("Get's value changed to %q after the item was replaced", it.Value)
	}
}

// When a class has no free chunk and -m allows no page, the class's least recently used item
// goes, even if the shard's byte budget has room: memory is bounded by pages.
func TestClassEvictsWhenPagesRunOut(t *testing.T) {
	s, _, _ := newTestStore(t, Config{Shards: 4, MemoryLimit: 4 << 20, Automove: AutomoveOff})
	val := make([]byte, 900) // one class
	for i := range 20000 {
		if _, err := s.Do(fmt.Sprintf("k%05d", i), func(*Item) (*Item, Op) { return &Item{Value: val}, Replace }); err != nil {
			t.Fatalf("store %d: %v", i, err)
		}
	}
	st := s.Stats()
	if st.TotalMalloced > 4<<20 || st.Evictions == 0 {
		t.Fatalf("stats %+v: want at most 4 pages and evictions", st)
	}
	classes := s.Classes()
	if len(classes) != 1 || classes[0].TotalPages != 4 || classes[0].UsedChunks != int(st.CurrItems) || classes[0].Evicted != st.Evictions {
		t.Fatalf("classes %+v, stats %+v", classes, st)
	}
	// The newest items are there, the oldest gone.
	mustMiss(t, s, "k00000")
	if _, ok := s.Get("k19999"); !ok {
		t.Fatal("the newest item was evicted")
	}
}

// TestMemoryBoundedUnderFlood64 stores far more than -m 64 in items of every class from many
// goroutines: the pages stay within -m (plus the first page each class may always take) and
// the Go heap stays small, since items live outside it.
func TestMemoryBoundedUnderFlood64(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 320 MiB")
	}
	const limit = 64 << 20
	s := New(Config{MemoryLimit: limit})
	var wg sync.WaitGroup
	var stored atomic.Int64
	for w := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 9))
			buf := make([]byte, 64<<10)
			for i := 0; stored.Load() < 5*limit; i++ {
				n := r.IntN(len(buf))
				if r.IntN(4) != 0 {
					n = r.IntN(2000) // most items small, as in a real cache
				}
				key := fmt.Sprintf("flood-%d-%d", w, i)
				if _, err := s.Do(key, func(*Item) (*Item, Op) { return &Item{Value: buf[:n]}, Replace }); err != nil {
					t.Errorf("store %d bytes: %v", n, err)
					return
				}
				stored.Add(int64(n))
			}
		})
	}
	wg.Wait()
	checkInvariants(t, s)
	st := s.Stats()
	bound := uint64(limit + len(s.sl.classes)*PageSize)
	if st.TotalMalloced > bound || st.Bytes > limit || st.Evictions == 0 {
		t.Fatalf("stats %+v: want pages within %d bytes, items within %d, evictions", st, bound, limit)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc > 32<<20 {
		t.Fatalf("heap %d MiB after a %d MiB flood into a %d MiB store", ms.HeapAlloc>>20, stored.Load()>>20, limit>>20)
	}
	runtime.KeepAlive(s)
}

// selfChecking is a value that names its key and version and carries a checksum, so a reader
// can tell a value that belongs to another key, an older write or torn bytes.
func selfChecking(key string, version uint32, size int) []byte {
	v := make([]byte, max(size, 12))
	binary.LittleEndian.PutUint32(v[4:], version)
	binary.LittleEndian.PutUint32(v[8:], crc32.ChecksumIEEE([]byte(key)))
	for i := 12; i < len(v); i++ {
		v[i] = byte(int(version) + i)
	}
	binary.LittleEndian.PutUint32(v, crc32.ChecksumIEEE(v[4:]))
	return v
}

func checkSelf(key string, v []byte) (version uint32, err error) {
	if len(v) < 12 {
		return 0, fmt.Errorf("%s: %d bytes", key, len(v))
	}
	if crc32.ChecksumIEEE(v[4:]) != binary.LittleEndian.Uint32(v) {
		return 0, fmt.Errorf("%s: checksum mismatch (%d bytes)", key, len(v))
	}
	if crc32.ChecksumIEEE([]byte(key)) != binary.LittleEndian.Uint32(v[8:]) {
		return 0, fmt.Errorf("%s: value of another key", key)
	}
	return binary.LittleEndian.Uint32(v[4:]), nil
}

// countingHook counts Changed calls per key.
type countingHook struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countingHook) Changed(key string) {
	h.mu.Lock()
	h.n[key]++
	h.mu.Unlock()
}

func (h *countingHook) Flushed(time.Time) {}

// TestRebalanceUnderLoad rewrites every key with values that move between size classes while
// pages are moved between classes in the background. Readers check every value they see; at the
// end each key holds its last acknowledged write, or it was removed with the hook told (an
// eviction, which the hook count shows), never silently lost or corrupted.
func TestRebalanceUnderLoad(t *testing.T) {
	const (
		workers = 4
		keys    = 800 // per worker
		rounds  = 6
	)
	hook := &countingHook{n: make(map[string]int)}
	s := New(Config{Shards: 8, MemoryLimit: 24 << 20, Hook: hook, Automove: AutomoveOff})
	sizes := []int{100, 700, 3000, 200, 9000, 1500}
	var stop atomic.Bool
	var moves, rescuesSeen atomic.Int64
	var bg sync.WaitGroup
	bg.Go(func() { // the mover: the most-paged class gives a page to a random other, or the pool
		r := rand.New(rand.NewPCG(5, 6))
		for !stop.Load() {
			dst := r.IntN(len(s.sl.classes))
			switch err := s.Reassign(-1, dst); {
			case err == nil:
				moves.Add(1)
			// No class with pages yet (src -1 finds none), one page only, or dst is the class
			// with the most pages.
			case errors.Is(err, ErrBadClass), errors.Is(err, ErrNoSpare), errors.Is(err, ErrSameClass), errors.Is(err, ErrBusy):
			default:
				t.Errorf("Reassign(-1, %d): %v", dst, err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	bg.Go(func() { // a reader of random keys
		r := rand.New(rand.NewPCG(7, 8))
		for !stop.Load() {
			key := fmt.Sprintf("w%d-%d", r.IntN(workers), r.IntN(keys))
			if it, ok := s.Get(key); ok {
				if _, err := checkSelf(key, it.Value); err != nil {
					t.Error(err)
					return
				}
				rescuesSeen.Add(1)
			}
		}
	})
	last := make([][]uint32, workers)
	refused := make([][]bool, workers) // a chained store found no memory: the key may be gone
	var wg sync.WaitGroup
	for w := range workers {
		last[w] = make([]uint32, keys)
		refused[w] = make([]bool, keys)
		wg.Go(func() {
			for round := range rounds {
				for k := range keys {
					key := fmt.Sprintf("w%d-%d", w, k)
					version := uint32(round + 1)
					size := sizes[(round+k+w)%len(sizes)]
					chained := k%200 == 0
					if chained {
						size = 600_000 // a small head, a largest-class chunk, a tail
					}
					val := selfChecking(key, version, size)
					_, err := s.Do(key, func(*Item) (*Item, Op) { return &Item{Value: val}, Replace })
					switch {
					case chained && errors.Is(err, ErrNoMemory):
						// The mover may leave the largest class without a page, as memcached
						// would answer out of memory; the old item is gone with the hook told.
						refused[w][k] = true
						continue
					case err != nil:
						t.Errorf("store %s: %v", key, err)
						return
					}
					last[w][k] = version
					refused[w][k] = false
				}
			}
		})
	}
	wg.Wait()
	stop.Store(true)
	bg.Wait()
	checkInvariants(t, s)

	missing, lost, chainedHeld := 0, 0, 0
	for w := range workers {
		for k := range keys {
			key := fmt.Sprintf("w%d-%d", w, k)
			it, ok := s.Get(key)
			if !ok {
				missing++
				// Each acknowledged write told the hook once; a removal tells it once more.
				if hook.n[key] <= rounds && !refused[w][k] {
					lost++
				}
				continue
			}
			if refused[w][k] {
				t.Fatalf("%s: found after its last store was refused", key)
			}
			v, err := checkSelf(key, it.Value)
			if err != nil {
				t.Fatal(err)
			}
			if len(it.Value) == 600_000 {
				chainedHeld++
			}
			if v != last[w][k] {
				t.Fatalf("%s: version %d, last written %d", key, v, last[w][k])
			}
		}
	}
	st := s.Stats()
	t.Logf("page moves %d, rescues %d, rebalancer evictions %d, evictions %d, missing %d of %d, chained items held %d",
		moves.Load(), st.SlabReassignRescues, st.SlabReassignEvictions, st.Evictions, missing, workers*keys, chainedHeld)
	if lost != 0 {
		t.Fatalf("%d keys gone without the hook being told", lost)
	}
	if moves.Load() == 0 || st.SlabsMoved == 0 || st.SlabReassignRescues == 0 {
		t.Fatalf("the test moved %d pages (%d counted) with %d rescues: it proved nothing", moves.Load(), st.SlabsMoved, st.SlabReassignRescues)
	}
}

// After a shift in value sizes, automove moves pages from the class nobody stores into to the
// class that keeps evicting.
func TestAutomoveFollowsSizeShift(t *testing.T) {
	s, clk, _ := newTestStore(t, Config{Shards: 2, MemoryLimit: 8 << 20})
	small, large := make([]byte, 100), make([]byte, 5000)
	for i := range 60000 {
		set(t, s, fmt.Sprintf("s%d", i), string(small), 0)
	}
	classOf := func(n int) int { return s.sl.classFor(hdrSize + 6 + n) }
	pagesOf := func(cls int) int {
		for _, c := range s.Classes() {
			if c.Class == cls {
				return c.TotalPages
			}
		}
		return 0
	}
	before := pagesOf(classOf(len(large)))
	for round := range 10 {
		for i := range 400 {
			set(t, s, fmt.Sprintf("L%d-%d", round, i), string(large), 0)
		}
		clk.Advance(time.Second)
		s.Sweep(16)
	}
	after := pagesOf(classOf(len(large)))
	st := s.Stats()
	if st.SlabsMoved == 0 || after <= before {
		t.Fatalf("large class pages %d -> %d, %d moved: automove did not follow the shift", before, after, st.SlabsMoved)
	}
	if st.TotalMalloced > 8<<20+uint64(len(s.sl.classes))*PageSize {
		t.Fatalf("pages grew past -m: %d bytes", st.TotalMalloced)
	}
}

func TestSetAutomove(t *testing.T) {
	for cfg, want := range map[int]int32{0: 1, AutomoveOff: 0, 1: 1, 2: 2, 7: 2} {
		if got := New(Config{Automove: cfg}).automove.Load(); got != want {
			t.Errorf("Config.Automove %d: mode %d, want %d", cfg, got, want)
		}
	}
	s := New(Config{})
	for mode, want := range map[int]int32{0: 0, 1: 1, 2: 2, 3: 2, -5: 0} {
		if s.SetAutomove(mode); s.automove.Load() != want {
			t.Errorf("SetAutomove(%d): mode %d, want %d", mode, s.automove.Load(), want)
		}
	}
	// The same size shift moves pages with automove on, none with it off.
	for _, mode := range []int{1, 0} {
		s, clk, _ := newTestStore(t, Config{Shards: 1, MemoryLimit: 4 << 20})
		s.SetAutomove(mode)
		for i := range 40000 {
			set(t, s, fmt.Sprintf("s%d", i), "small", 0)
		}
		for i := range 3000 {
			set(t, s, fmt.Sprintf("L%d", i), strings.Repeat("x", 5000), 0)
			if i%300 == 0 {
				clk.Advance(time.Second)
				s.Sweep(16)
			}
		}
		if moved := s.Stats().SlabsMoved; (mode == 0) != (moved == 0) {
			t.Fatalf("automove %d moved %d pages", mode, moved)
		}
	}
}

func TestReassignErrors(t *testing.T) {
	s, _, _ := newTestStore(t, Config{Shards: 1, MemoryLimit: 4 << 20})
	for _, tc := range []struct {
		src, dst int
		want     error
	}{
		{1, 1, ErrSameClass},
		{0, 2, ErrNoSpare}, // the global page pool, as memcached: a class, never with a page to spare
		{1, 99, ErrBadClass},
		{1, -2, ErrBadClass},
		{1, 2, ErrNoSpare}, // no pages yet
		{-1, 2, ErrBadClass},
	} {
		if err := s.Reassign(tc.src, tc.dst); !errors.Is(err, tc.want) {
			t.Errorf("Reassign(%d, %d) = %v, want %v", tc.src, tc.dst, err, tc.want)
		}
	}
	val := make([]byte, 100)
	for i := range 30000 {
		set(t, s, fmt.Sprintf("k%d", i), string(val), 0)
	}
	cls := s.sl.classFor(hdrSize + 6 + len(val))
	if err := s.Reassign(cls, 0); err != nil {
		t.Fatalf("Reassign(%d, 0): %v", cls, err)
	}
	if st := s.Stats(); st.SlabGlobalPagePool != 1 || st.SlabsMoved != 1 {
		t.Fatalf("after a move to the pool: %+v", st)
	}
}

// A Replace whose value shares the current item's bytes (meta's stale-marking rewrite, or a
// slice of them) stores exactly those bytes, in place or in a new chunk.
func TestReplaceSharingCurValue(t *testing.T) {
	s, _, _ := newTestStore(t, Config{Shards: 1})
	set(t, s, "k", "hello world", 0)
	for _, tc := range []struct {
		cut  func([]byte) []byte
		want string
	}{
		{func(v []byte) []byte { return v }, "hello world"},
		{func(v []byte) []byte { return v[1:] }, "ello world"},
		{func(v []byte) []byte { return v[:4] }, "ello"},
		{func(v []byte) []byte { return append(v, make([]byte, 500)...)[:4] }, "ello"}, // grows elsewhere first
	} {
		if _, err := s.Do("k", func(cur *Item) (*Item, Op) {
			return &Item{Value: tc.cut(cur.Value), Stale: true}, Replace
		}); err != nil {
			t.Fatal(err)
		}
		if it, _ := s.Get("k"); string(it.Value) != tc.want || !it.Stale {
			t.Fatalf("got %q stale %v, want %q", it.Value, it.Stale, tc.want)
		}
	}
}

func TestKeyTooLong(t *testing.T) {
	s, _, h := newTestStore(t, Config{Shards: 1})
	long := strings.Repeat("k", MaxKeyLen+1)
	if _, err := s.Do(long, func(*Item) (*Item, Op) { return &Item{Value: []byte("v")}, Replace }); !errors.Is(err, ErrKeyTooLong) {
		t.Fatalf("err %v, want ErrKeyTooLong", err)
	}
	h.expectChanged(t)
	mustMiss(t, s, long)
	longest := long[:MaxKeyLen]
	set(t, s, longest, "v", 0)
	mustGet(t, s, longest, "v")
}

// TestModelAcrossClasses drives one Store and a map with random stores, appends sharing the old
// bytes, resizing Modifies, deletes and page moves, with values from one byte to several pages,
// and compares every read. Items a page move evicts are the ones it reports to the hook.
func TestModelAcrossClasses(t *testing.T) {
	s, _, h := newTestStore(t, Config{Shards: 4, MemoryLimit: 256 << 20, MaxItemSize: 4 << 20, Automove: AutomoveOff})
	r := rand.New(rand.NewPCG(11, 12))
	model := map[string][]byte{}
	size := func() int {
		switch r.IntN(10) {
		case 0:
			return r.IntN(3 << 20)
		case 1, 2:
			return r.IntN(20000)
		default:
			return r.IntN(600)
		}
	}
	fill := func(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }
	for step := range 4000 {
		key := fmt.Sprintf("k%d", r.IntN(60))
		switch op := r.IntN(10); {
		case op < 4:
			v := fill(size(), byte(step))
			set(t, s, key, string(v), 0)
			model[key] = v
		case op < 5: // append through Replace, next.Value built on cur.Value
			suffix := fill(r.IntN(3000), byte(step))
			s.Do(key, func(cur *Item) (*Item, Op) {
				if cur == nil {
					return nil, Keep
				}
				return &Item{Value: append(cur.Value, suffix...)}, Replace
			})
			if v, ok := model[key]; ok {
				model[key] = append(append([]byte(nil), v...), suffix...)
			}
		case op < 6: // Modify to a prefix or to fresh bytes
			n := size()
			s.Do(key, func(cur *Item) (*Item, Op) {
				if cur == nil {
					return nil, Keep
				}
				if n <= len(cur.Value) {
					cur.Value = cur.Value[:n]
				} else {
					cur.Value = fill(n, 'm')
				}
				return nil, Modify
			})
			if v, ok := model[key]; ok {
				if n <= len(v) {
					model[key] = v[:n]
				} else {
					model[key] = fill(n, 'm')
				}
			}
		case op < 7:
			s.Do(key, func(*Item) (*Item, Op) { return nil, Delete })
			delete(model, key)
		case op < 8:
			h.take()
			_ = s.Reassign(-1, r.IntN(len(s.sl.classes)))
			changed, _, _ := h.take()
			for k := range changed {
				delete(model, k)
			}
		default:
			it, ok := s.Get(key)
			v, want := model[key]
			if ok != want || !bytes.Equal(it.Value, v) {
				t.Fatalf("step %d: get %s: %d bytes (hit %v), model %d bytes (hit %v)", step, key, len(it.Value), ok, len(v), want)
			}
		}
		if step%500 == 0 {
			checkInvariants(t, s)
		}
	}
	for key, v := range model {
		if it, ok := s.Get(key); !ok || !bytes.Equal(it.Value, v) {
			t.Fatalf("end: %s differs from the model", key)
		}
	}
	if st := s.Stats(); st.Evictions != 0 || st.SlabsMoved == 0 {
		t.Fatalf("stats %+v: want page moves and no evictions", st)
	}
}
