// Package cache is the userspace item store of xdpcache: items with flags, expiry and CAS uniques,
// kept under a memory limit with LRU eviction, following memcached 1.6 semantics.
//
// Items live in slab pages as memcached keeps them (slab.go): 1 MiB pages mapped outside the Go
// heap, each cut into chunks of one size class; an item takes the smallest chunk that holds its
// header, key and value, and items larger than the largest chunk take a chain of chunks. The
// index and LRU links are chunk references (uint32), never Go pointers, so the garbage collector
// has nothing per item to scan. MemoryLimit bounds the pages, as -m does in memcached (a class
// with no page still gets its first); the rebalancer (rebalance.go) moves pages between classes.
//
// A Store is safe for concurrent use. Keys are hashed to shards; each shard has its own mutex,
// hash index, and one LRU list per size class. Two limits apply. The pages: when a class has no
// free chunk and no page to take, the least recently used item of that class is evicted, from the
// storing shard's list of that class or else another shard's. And, as before slabs, a budget of
// MemoryLimit/Shards per shard counted in item bytes (key, value and ItemOverhead): when a store
// exceeds it, the shard evicts the least recently used of its items across classes.
//
// Every change to an item is reported to the Hook while the key's shard lock is held, before the
// operation returns, so a caller that replies after Do returns replies after the hook ran, and no
// other operation on the same key can interleave with the hook.
//
// Expiry and flush_all are lazy: dead items are removed when an operation finds them, when
// eviction reaches them, or by Sweep. Until then they count in Stats.CurrItems and Bytes.
package cache

import (
	"errors"
	"hash/maphash"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Item is one stored item. An Item that Get returns owns its Value; the *cur that Do hands to fn
// may share the store's memory and is valid only until Do returns.
type Item struct {
	Value   []byte
	Flags   uint32
	Exptime int64  // absolute expiry, unix seconds; 0 = never
	CAS     uint64 // assigned by the store on every Replace; given by the caller on Install (see Op)
	// State kept for the meta protocol:
	LastAccess int64 // unix seconds of the last fetch or store
	Fetched    bool  // fetched at least once since stored
	Stale      bool  // marked stale (meta "I" invalidate)
	WinIssued  bool  // a client already got the recache "win" token

	hit Hit // what Count recorded
}

// A Hit names one of memcached's per-class counters (stats slabs) that only the command knows to
// count: the store counts get_hits, cmd_set and delete_hits itself.
type Hit uint8

// The hits Item.Count records.
const (
	NoHit     Hit = iota
	IncrHit       // incr_hits
	DecrHit       // decr_hits
	CASHit        // cas_hits
	CASBadval     // cas_badval
	TouchHit      // touch_hits
	numHits
)

// Count records, on the cur Do hands its fn, one hit of kind h in the item's size class, counted
// when fn returns; one per call, the last one wins. On any other Item it does nothing useful.
func (it *Item) Count(h Hit) { it.hit = h }

// Hook sees every change. It is called with the key's shard lock held, before the operation
// returns, so the caller's reply is sent only after the hook ran. A hook must not call back into
// the Store (it would deadlock on the shard lock) and should be quick: it stalls every key of the
// shard while it runs.
type Hook interface {
	// Changed reports that key's item was replaced, modified, deleted, expired or evicted.
	Changed(key string)
	// Flushed reports flush_all: every item stored before deadline is gone from deadline on.
	// It is called with every shard lock held.
	Flushed(deadline time.Time)
}

// Config configures a Store.
type Config struct {
	// MemoryLimit is the bytes of items (key + value + ItemOverhead) the store keeps; beyond it
	// items are evicted in LRU order. 0 means DefaultMemoryLimit.
	MemoryLimit int64
	// MaxItemSize is memcached's -I: the largest item (key + value + ItemOverhead) accepted; see
	// ErrTooLarge. 0 means DefaultMaxItemSize.
	MaxItemSize int64
	// Shards is the number of lock shards, at most 127 (more are cut to 127). 0 picks a
	// default: up to 64, fewer when the memory limit is small, so that every shard's budget holds
	// at least shardMinItems items of MaxItemSize.
	Shards int
	// GrowthFactor is memcached's -f: each size class's chunk is this much larger than the one
	// before. 0 means DefaultGrowthFactor; values outside (1, 2] are clamped.
	GrowthFactor float64
	// MinChunk is memcached's -n: the smallest chunk holds this many bytes of key and value
	// beyond memcached's item header. 0 means DefaultMinChunk.
	MinChunk int
	// Automove is memcached's slab_automove: 1 moves a page when one class keeps evicting while
	// another does not, 2 after a single check, AutomoveOff never moves pages on its own. 0 means
	// 1, memcached's default. SetAutomove changes it later.
	Automove int
	// Now is the clock, for tests; nil means the wall clock, read every 10 ms by one goroutine
	// for the process (cache/clock.go).
	Now func() time.Time
	// Hook sees every change; nil means none.
	Hook Hook
}

// Defaults match memcached's -m 64 and -I 1m.
const (
	DefaultMemoryLimit = 64 << 20
	DefaultMaxItemSize = 1 << 20
)

// ItemOverhead is the per-item bytes counted against MemoryLimit and MaxItemSize
// (memcached: 48 B header + 8 B CAS).
const ItemOverhead = 56

// Op tells Do what fn did.
type Op int

const (
	// Keep: nothing stored changed (fn may have updated access state: Fetched, LastAccess,
	// WinIssued). A live item is moved to the LRU head, as memcached bumps items it looks at.
	Keep Op = iota
	// Modify: fn changed *cur in place (Exptime, Flags, Stale...); the hook runs; CAS is kept.
	// With no live item it is the same as Keep.
	Modify
	// Replace: store *next (a new item); the store assigns next.CAS a fresh unique and sets
	// LastAccess to now; the hook runs.
	Replace
	// Delete: remove the item; the hook runs if there was one.
	Delete
	// Install: store *next like Replace, but keep next.CAS as given. It is for items copied from
	// another server (a fronted memcached), whose CAS uniques clients must see unchanged. Such a
	// CAS is not ordered with the store's own; flush_all does not depend on it (see entry.seq).
	Install
)

// String names the op for test and error messages.
func (op Op) String() string {
	switch op {
	case Keep:
		return "Keep"
	case Modify:
		return "Modify"
	case Replace:
		return "Replace"
	case Delete:
		return "Delete"
	case Install:
		return "Install"
	}
	return "Op(invalid)"
}

var (
	// ErrTooLarge is returned when an item is larger than MaxItemSize. The old item under the key
	// is removed, as memcached does, so a failed set never leaves the older value readable.
	ErrTooLarge = errors.New("cache: object too large for cache")
	// ErrNoMemory is returned when an item cannot fit even after eviction: it is larger than the
	// shard's budget, or its size class has no free chunk, no page to take and no item another
	// operation is not holding. The old item under the key is removed, as for ErrTooLarge.
	ErrNoMemory = errors.New("cache: out of memory")
	// ErrKeyTooLong is returned when a Replace or Install names a key longer than MaxKeyLen;
	// nothing is changed.
	ErrKeyTooLong = errors.New("cache: key too long")
	// ErrInvalidOp is returned when fn returns an unknown Op or Replace with a nil item; nothing
	// is changed.
	ErrInvalidOp = errors.New("cache: invalid operation")
)

// shardMinItems is how many maximum-size items a shard's budget must hold when Shards is chosen
// by default; with fewer, one large item would evict a whole shard.
const shardMinItems = 4

// defaultShards is the shard count when the memory limit is large enough.
const defaultShards = 64

// maxDelta is memcached's REALTIME_MAXDELTA: larger exptimes are absolute unix times.
const maxDelta = 60 * 60 * 24 * 30

// MaxKeyLen is memcached's KEY_MAX_LENGTH, the longest key the store keeps.
const MaxKeyLen = 250

// AutomoveOff is the Config.Automove value that stops the rebalancer moving pages on its own
// (memcached's slab_automove 0, which Config.Automove cannot say: there 0 means the default).
const AutomoveOff = -1

// Store is the item store. Create it with New.
type Store struct {
	shards      []shard
	seed        maphash.Seed
	now         func() time.Time
	hook        Hook
	maxItemSize int64
	memoryLimit int64
	sl          *slabs

	// cas is the last CAS unique handed out; the first is 1. Every Replace writes it, so it sits
	// on its own cache line, away from the fields every Get reads.
	_   [64]byte
	cas atomic.Uint64
	_   [56]byte
	// flush is the flush_all state. It is replaced only with every shard lock held, and read
	// with at least one held.
	flush atomic.Pointer[flushState]
	// flushes counts FlushAll calls.
	flushes atomic.Uint64
	// sweepNext is the shard Sweep starts at, so that successive sweeps rotate over the shards.
	sweepNext atomic.Uint64
	// evictNext is the shard a class short of chunks looks at first for a victim elsewhere.
	evictNext atomic.Uint64
	// automove is the rebalancer's mode; lastAutomove the unix second it last looked.
	automove     atomic.Int32
	lastAutomove atomic.Int64
	// rebalancing serializes page moves.
	rebalancing sync.Mutex
	// cleanup frees the off-heap memory when the Store is collected; Close does it first.
	cleanup   runtime.Cleanup
	closeOnce sync.Once
}

// New returns an empty Store.
func New(cfg Config) *Store {
	s := &Store{
		seed:        maphash.MakeSeed(),
		now:         cfg.Now,
		hook:        cfg.Hook,
		maxItemSize: cfg.MaxItemSize,
		memoryLimit: cfg.MemoryLimit,
	}
	if s.now == nil {
		startClock()
		s.now = coarseNow
	}
	if s.maxItemSize <= 0 {
		s.maxItemSize = DefaultMaxItemSize
	}
	if s.memoryLimit <= 0 {
		s.memoryLimit = DefaultMemoryLimit
	}
	factor := cfg.GrowthFactor
	if factor == 0 {
		factor = DefaultGrowthFactor
	}
	factor = min(max(factor, 1.01), 2)
	minChunk := cfg.MinChunk
	if minChunk <= 0 {
		minChunk = DefaultMinChunk
	}
	s.sl = newSlabs(s.memoryLimit, factor, minChunk)
	n := cfg.Shards
	if n <= 0 {
		n = defaultShards
		for n > 1 && s.memoryLimit/int64(n) < shardMinItems*s.maxItemSize {
			n /= 2
		}
	}
	n = min(n, ownerShard) // page.owner holds shard + 1 below the continuation bit
	s.shards = make([]shard, n)
	budget := s.memoryLimit / int64(n)
	for i := range s.shards {
		s.shards[i].init(i, budget, s.sl, s.seed)
	}
	s.flush.Store(&flushState{})
	switch cfg.Automove {
	case 0:
		s.SetAutomove(1)
	case AutomoveOff:
		s.SetAutomove(0)
	default:
		s.SetAutomove(cfg.Automove)
	}
	// Pages and index are outside the Go heap: return them when the Store is collected, or at
	// Close.
	s.cleanup = runtime.AddCleanup(s, freeOffHeap, offHeapMemory{s.sl, s.shards})
	return s
}

// freeOffHeap unmaps a store's pages and index.
func freeOffHeap(m offHeapMemory) {
	m.sl.freeMemory()
	for i := range m.shards {
		freeUint32(m.shards[i].buckets)
	}
}

// Close returns the store's pages and index to the system at once instead of when the Store is
// collected: the collector does not see memory outside the Go heap, so a program that makes many
// stores (tests, fuzzing) could hold theirs until a collection its small heap never triggers. The
// Store, and any value read from it inside Do, must not be used afterwards.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		s.cleanup.Stop()
		freeOffHeap(offHeapMemory{s.sl, s.shards})
	})
}

// offHeapMemory is what a collected Store's cleanup unmaps.
type offHeapMemory struct {
	sl     *slabs
	shards []shard
}

// SetAutomove sets the rebalancer's mode as memcached's "slabs automove" does: 0 off, 1 on, 2
// aggressive. Other values are clamped.
func (s *Store) SetAutomove(mode int) {
	s.automove.Store(int32(min(max(mode, 0), 2)))
}

// Now returns the store's clock reading.
func (s *Store) Now() time.Time { return s.now() }

// Exptime converts a protocol exptime to absolute unix seconds the way memcached does: 0 means
// never (0); a negative value means already expired (a time in the past, never 0); 1 to 30 days
// in seconds is relative to now; larger values are absolute unix times (in the past = expired).
func (s *Store) Exptime(raw int64) int64 {
	switch {
	case raw == 0:
		return 0
	case raw < 0:
		if past := s.now().Unix() - 1; past > 0 {
			return past
		}
		return -1 // still in the past, and not 0, which would mean never
	case raw <= maxDelta:
		return s.now().Unix() + raw
	default:
		return raw
	}
}

func (s *Store) shardFor(key string) *shard {
	return s.shardOf(maphash.String(s.seed, key))
}

// shardOf returns the shard of a key hashing to h. It maps the hash's low 32 bits onto the
// shards by a multiply and shift, not a division, which costs more than the rest of the
// arithmetic of a lookup; the index buckets use the high 32 bits.
func (s *Store) shardOf(h uint64) *shard {
	return &s.shards[uint64(uint32(h))*uint64(len(s.shards))>>32]
}

func itemSize(key string, value []byte) int64 {
	return int64(len(key)) + int64(len(value)) + ItemOverhead
}

// Do runs fn under key's lock with the live item: nil if absent, expired or flushed (expired and
// flushed items found here are removed and the hook runs). fn must not call back into the Store,
// except Now and Exptime, which take no lock. fn may change *cur only when it returns Keep (access
// state) or Modify; *cur, and the bytes of cur.Value, are valid only until Do returns.
//
// For Replace, next's size is checked against MaxItemSize (ErrTooLarge) and the shard's budget
// (ErrNoMemory); on either error the old item is removed (hook runs). Otherwise other items are
// evicted in LRU order until next fits (hook runs for each), next.CAS is set to a fresh unique,
// and a copy of *next is stored. next.Value may share cur.Value's bytes.
//
// Install is Replace keeping next.CAS. Do returns the CAS of the stored item for Replace and
// Install, else 0.
func (s *Store) Do(key string, fn func(cur *Item) (next *Item, op Op)) (cas uint64, err error) {
	h := maphash.String(s.seed, key)
	sh := s.shardOf(h)
	sh.mu.Lock()
	// One deferred call and one return: the compiler inlines the defer, which it does not for
	// a function with as many returns as do.
	defer sh.endDo()
	return s.do(sh, key, h, fn)
}

// endDo forgets Do's scratch item, which may share the store's memory, and unlocks the shard.
func (sh *shard) endDo() {
	sh.cur = Item{}
	sh.mu.Unlock()
}

// do is Do under sh's lock.
func (s *Store) do(sh *shard, key string, h uint64, fn func(cur *Item) (next *Item, op Op)) (uint64, error) {
	now := s.now()
	ref, c := s.liveChunk(sh, key, h, now)
	var cur *Item
	if ref != 0 {
		// The shard's scratch Item: fn's argument escapes, and a fresh one would cost an
		// allocation on every call.
		sh.load(c, false, &sh.cur)
		cur = &sh.cur
	}
	next, op := fn(cur)
	// memcached counts a set command for a cas refused for its unique, and none for incr or decr.
	countSet := true
	if cur != nil && cur.hit != NoHit && cur.hit < numHits {
		st := &sh.lists[sh.itemClass(ref)].st
		st.hits[cur.hit]++
		switch cur.hit {
		case CASBadval:
			st.cmdSet++
		case IncrHit, DecrHit:
			countSet = false
		}
	}

	switch op {
	case Keep:
		if ref != 0 {
			sh.saveMeta(ref, cur)
			sh.moveToFront(sh.itemClass(ref), ref)
		}
		return 0, nil
	case Modify:
		if ref == 0 {
			return 0, nil
		}
		return 0, s.modified(sh, key, h, ref, cur, now)
	case Delete:
		if ref != 0 {
			sh.lists[sh.itemClass(ref)].st.deleteHits++
			sh.remove(ref, h)
			s.changed(key)
		}
		return 0, nil
	case Replace:
		if next == nil {
			return 0, ErrInvalidOp
		}
		return s.store(sh, key, h, ref, next, now, false, countSet)
	case Install:
		if next == nil {
			return 0, ErrInvalidOp
		}
		return s.store(sh, key, h, ref, next, now, true, true)
	default:
		return 0, ErrInvalidOp
	}
}

// store puts next under key, replacing old (0 if none); keepCAS keeps next.CAS (Install);
// countSet counts it in its class's cmd_set. The shard lock is held.
func (s *Store) store(sh *shard, key string, h uint64, old uint32, next *Item, now time.Time,
	keepCAS, countSet bool) (uint64, error) {
	if len(key) > MaxKeyLen {
		return 0, ErrKeyTooLong // and no item can be under such a key
	}
	size := itemSize(key, next.Value)
	if err := s.checkSize(sh, size); err != nil {
		s.removeOld(sh, key, h, old)
		return 0, err
	}
	var ref uint32
	var cls int
	inPlace := old != 0 && sh.fitsInPlace(old, key, next.Value)
	if inPlace {
		// Same class, one chunk: rewrite it where it is, as no reader outside this lock can
		// see it. A value sharing the old bytes sits at the same offset, so copy is exact.
		ref, cls = old, sh.class(old)
		c := sh.chunk(ref)
		oldSize := sh.itemSizeOf(ref)
		put32(c, hVlen, uint32(len(next.Value)))
		copy(c[hdrSize+len(key):], next.Value)
		l := &sh.lists[cls]
		l.requested += size - oldSize
		l.st.totalItems++
		sh.bytes += size - oldSize
		// Marked rather than moved, as a read marks it: eviction gives it its second chance.
		c[hBits] |= bitActive
	} else {
		var err error
		if ref, cls, err = s.place(sh, key, next.Value, old); err != nil {
			s.removeOld(sh, key, h, old)
			return 0, err
		}
	}
	seq := s.cas.Add(1)
	if !keepCAS {
		next.CAS = seq
	}
	next.LastAccess = now.Unix()
	c := sh.chunk(ref)
	put64(c, hSeq, seq)
	put64(c, hStored, uint64(now.UnixNano()))
	sh.saveMeta(ref, next)
	if !inPlace {
		if old != 0 {
			sh.remove(old, h)
		}
		sh.link(ref, cls, h, size)
	}
	if countSet {
		sh.lists[cls].st.cmdSet++
	}
	s.makeRoom(sh, ref, now)
	s.changed(key)
	return next.CAS, nil
}

// removeOld removes key's item after a failed store, as memcached does. The shard lock is held.
func (s *Store) removeOld(sh *shard, key string, h uint64, old uint32) {
	if old != 0 {
		sh.remove(old, h)
		s.changed(key)
	}
}

// modified writes back an in-place change of cur. A Modify that swapped the value moves the item
// to chunks of the new size, which must obey the same limits as a store. The shard lock is held.
func (s *Store) modified(sh *shard, key string, h uint64, ref uint32, cur *Item, now time.Time) error {
	c := sh.chunk(ref)
	if !sh.sameValue(ref, cur.Value) {
		size := itemSize(key, cur.Value)
		if err := s.checkSize(sh, size); err != nil {
			s.removeOld(sh, key, h, ref)
			return err
		}
		nref, cls, err := s.place(sh, key, cur.Value, ref)
		if err != nil {
			s.removeOld(sh, key, h, ref)
			return err
		}
		nc := sh.chunk(nref)
		put64(nc, hSeq, u64(c, hSeq))
		put64(nc, hStored, u64(c, hStored))
		sh.remove(ref, h)
		sh.link(nref, cls, h, size)
		sh.lists[cls].st.totalItems-- // the same item, moved
		ref = nref
	}
	sh.saveMeta(ref, cur)
	sh.moveToFront(sh.itemClass(ref), ref)
	s.makeRoom(sh, ref, now)
	s.changed(key)
	return nil
}

func (s *Store) checkSize(sh *shard, size int64) error {
	if size > s.maxItemSize {
		return ErrTooLarge
	}
	if size > sh.budget {
		return ErrNoMemory
	}
	return nil
}

// place allocates chunks for key and value and writes them, with every other header field still
// to be set; it evicts what it must, never keep (the item being replaced, whose bytes value may
// share). The shard lock is held.
func (s *Store) place(sh *shard, key string, value []byte, keep uint32) (ref uint32, cls int, err error) {
	total := hdrSize + len(key) + len(value)
	if cls = s.sl.classFor(total); cls != 0 {
		if ref, err = s.allocChunk(sh, cls, keep); err != nil {
			return 0, 0, err
		}
		c := sh.chunk(ref)
		c[hKlen], c[hBits] = byte(len(key)), 0
		put32(c, hVlen, uint32(len(value)))
		copy(c[hdrSize:], key)
		copy(c[hdrSize+len(key):], value)
		return ref, cls, nil
	}
	// A chain, as memcached 1.6 chunks an item larger than its largest chunk: a head chunk of
	// the class that fits the header, the key and the first continuation's ref, and no value;
	// then continuations, each holding its next's ref, the head's ref and value bytes, of the
	// largest class but for the last, which takes the smallest class that fits what remains.
	big := s.sl.largest()
	contCap := s.sl.classes[big].size - contHdr
	n := (len(value) + contCap - 1) / contCap
	classes := make([]int, 1, n+1)
	classes[0] = s.sl.classFor(headSpan(len(key), true))
	for i := range n {
		c := big
		if i == n-1 {
			c = s.sl.classFor(contHdr + len(value) - i*contCap)
		}
		classes = append(classes, c)
	}
	refs := make([]uint32, 0, n+1)
	for _, c := range classes {
		r, err := s.allocChunk(sh, c, keep)
		if err != nil {
			s.sl.release(refs...)
			return 0, 0, err
		}
		refs = append(refs, r)
	}
	s.sl.markContinuations(refs[1:])
	ref = refs[0]
	c := sh.chunk(ref)
	c[hKlen], c[hBits] = byte(len(key)), bitChained
	put32(c, hVlen, uint32(len(value)))
	copy(c[hdrSize:], key)
	put32(c, hdrSize+len(key), refs[1])
	rest := value
	for i := 1; i <= n; i++ {
		cc := sh.chunk(refs[i])
		var nxt uint32
		if i < n {
			nxt = refs[i+1]
		}
		put32(cc, 0, nxt)
		put32(cc, 4, ref)
		rest = rest[copy(cc[contHdr:], rest):]
	}
	return ref, big, nil
}

// allocChunk takes a chunk of class cls, evicting that class's least recently used items until
// one is free: from this shard's list, else from another shard's whose lock is free at once.
// The shard lock is held.
func (s *Store) allocChunk(sh *shard, cls int, keep uint32) (uint32, error) {
	for {
		if ref, ok := s.sl.alloc(cls, sh.id, true); ok {
			return ref, nil
		}
		now := s.now()
		if v := s.victim(sh, cls, keep, now); v != 0 {
			s.evict(sh, v, now)
			continue
		}
		if s.evictElsewhere(sh, cls, now) {
			continue
		}
		sh.lists[cls].st.outOfMemory++
		return 0, ErrNoMemory
	}
}

// evictElsewhere evicts the least recently used item of class cls in another shard whose lock
// it gets without waiting; it reports whether it did. sh's lock is held.
func (s *Store) evictElsewhere(sh *shard, cls int, now time.Time) bool {
	n := len(s.shards)
	start := int(s.evictNext.Add(1) % uint64(n))
	for i := range n {
		t := &s.shards[(start+i)%n]
		if t == sh || !t.mu.TryLock() {
			continue
		}
		v := s.victim(t, cls, 0, now)
		if v != 0 {
			s.evict(t, v, now)
		}
		t.mu.Unlock()
		if v != 0 {
			return true
		}
	}
	return false
}

// evictSearch is how many items from the LRU tail eviction looks at for an expired or flushed one
// to reclaim before it evicts a live item (memcached looks at 5).
const evictSearch = 5

// maxRescues bounds the active items one eviction moves back to the head of their list before
// it takes the tail whatever it is. Each rescue clears the bit a read set, so over time they
// cost at most one list move per read.
const maxRescues = 64

// victim picks the item of class cls to evict in sh: the first expired or flushed one among the
// evictSearch least recently used, else the least recently used that was not read since it last
// moved in the list; never keep. An item read since (active) gets a second chance: it moves to
// the head, its bit cleared, as memcached's LRU moves an active item out of the cold tail
// rather than evict it. Reads thus only set a bit, and the list moves happen here, at most one
// per read. The lock is held.
func (s *Store) victim(sh *shard, cls int, keep uint32, now time.Time) uint32 {
	fs := s.flush.Load()
	nowSec, nowNano := now.Unix(), now.UnixNano()
	for rescues := 0; ; rescues++ {
		v := sh.lists[cls].tail
		if v == keep && v != 0 {
			v = u32(sh.chunk(v), hPrev)
		}
		for i, r := 0, v; i < evictSearch && r != 0; i++ {
			c := sh.chunk(r)
			if r != keep && (expiredAt(c, nowSec) || fs.flushed(c, nowNano)) {
				return r
			}
			r = u32(c, hPrev)
		}
		if v == 0 {
			return 0
		}
		c := sh.chunk(v)
		if c[hBits]&bitActive == 0 || rescues == maxRescues {
			return v
		}
		c[hBits] &^= bitActive
		sh.unlinkLRU(cls, v, c)
		sh.pushFront(cls, v, c)
	}
}

// makeRoom evicts items other than keep until the shard is within its budget, least recently
// used first across the shard's classes. The shard lock is held.
func (s *Store) makeRoom(sh *shard, keep uint32, now time.Time) {
	for sh.bytes > sh.budget {
		// The oldest tail: the classes' lists are each in LRU order, so the shard's least
		// recently used item is the tail bumped longest ago.
		best, bestAge := 0, uint32(0)
		for cls := 1; cls < len(sh.lists); cls++ {
			t := sh.lists[cls].tail
			if t == keep && t != 0 {
				t = u32(sh.chunk(t), hPrev)
			}
			if t == 0 {
				continue
			}
			if age := sh.bump - u32(sh.chunk(t), hBump); best == 0 || age > bestAge {
				best, bestAge = cls, age
			}
		}
		if best == 0 {
			return // only keep is left, and checkSize guaranteed it fits
		}
		s.evict(sh, s.victim(sh, best, keep, now), now)
	}
}

// evict removes ref to make room, counting it as memcached does: an expired or flushed item's
// memory is reclaimed, a live one is evicted. The shard lock is held.
func (s *Store) evict(sh *shard, ref uint32, now time.Time) {
	c := sh.chunk(ref)
	st := &sh.lists[sh.itemClass(ref)].st
	fetched := c[hBits]&bitFetched != 0
	switch {
	case expiredAt(c, now.Unix()):
		st.reclaimed++
		st.expired++
		if !fetched {
			st.expiredUnfetched++
		}
	case s.flush.Load().flushed(c, now.UnixNano()):
		st.reclaimed++
	default:
		st.evicted++
		if int64(u64(c, hExp)) != 0 {
			st.evictedNonzero++
		}
		if !fetched {
			st.evictedUnfetched++
		}
		st.evictedTime = now.Unix() - int64(u32(c, hAccess))
	}
	key := string(chunkKey(c))
	sh.remove(ref, maphash.String(s.seed, key))
	s.changed(key)
}

// live returns key's head ref if the item is live, removing it (hook runs) if it is expired or
// flushed. The shard lock is held.
func (s *Store) live(sh *shard, key string, h uint64, now time.Time) uint32 {
	ref, _ := s.liveChunk(sh, key, h, now)
	return ref
}

// liveChunk is live, also returning the head chunk.
func (s *Store) liveChunk(sh *shard, key string, h uint64, now time.Time) (uint32, []byte) {
	ref, c := sh.find(key, h)
	if ref == 0 || s.reapChunk(sh, ref, c, h, now) {
		return 0, nil
	}
	return ref, c
}

// reap removes ref if it is expired or flushed and reports whether it did. The shard lock is
// held.
func (s *Store) reap(sh *shard, ref uint32, h uint64, now time.Time) bool {
	return s.reapChunk(sh, ref, sh.chunk(ref), h, now)
}

// reapChunk is reap with ref's head chunk c.
func (s *Store) reapChunk(sh *shard, ref uint32, c []byte, h uint64, now time.Time) bool {
	switch {
	case expiredAt(c, now.Unix()):
		st := &sh.lists[sh.itemClass(ref)].st
		st.expired++
		if c[hBits]&bitFetched == 0 {
			st.expiredUnfetched++
		}
	case s.flush.Load().flushed(c, now.UnixNano()):
	default:
		return false
	}
	key := string(chunkKey(c))
	sh.remove(ref, h)
	s.changed(key)
	return true
}

func expiredAt(c []byte, nowSec int64) bool {
	exp := int64(u64(c, hExp))
	return exp != 0 && exp <= nowSec
}

func (s *Store) changed(key string) {
	if s.hook != nil {
		s.hook.Changed(key)
	}
}

// Get returns a copy of key's live item and records the fetch as View does. The copy shows the
// access state from before this fetch (what meta flags h and l report). The hook runs only if an
// expired or flushed item was removed. It repeats View's lookup rather than call View with a
// closure, which measured slower.
func (s *Store) Get(key string) (it Item, ok bool) {
	h := maphash.String(s.seed, key)
	sh := s.shardOf(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	ref, c := s.liveChunk(sh, key, h, now)
	if ref == 0 {
		return Item{}, false
	}
	sh.load(c, true, &it)
	sh.fetched(ref, c, now)
	return it, true
}

// View calls fn with key's live item and records the fetch as Get does, without copying the
// value: *it is valid only while fn runs and it.Value's bytes are the store's memory; fn must
// change neither. fn runs under the key's shard lock, so it must not call back into the Store and
// should be quick. The item shows the access state from before this fetch. View reports whether
// there was a live item; fn is not called if there was none.
func (s *Store) View(key string, fn func(it *Item)) bool {
	h := maphash.String(s.seed, key)
	sh := s.shardOf(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	ref, c := s.liveChunk(sh, key, h, now)
	if ref == 0 {
		return false
	}
	// The shard's scratch Item, as in Do: filled field by field and handed over, not copied.
	sh.load(c, false, &sh.cur)
	fn(&sh.cur)
	sh.cur.Value = nil
	sh.fetched(ref, c, now)
	return true
}

// RecordFetch records a fetch of key that was answered elsewhere (the kernel cache): Fetched,
// LastAccess = now and the active mark that gives it a second chance in the LRU, as View does.
// Nothing happens for a key that is gone; an expired or flushed one is removed (the hook runs).
func (s *Store) RecordFetch(key string) {
	h := maphash.String(s.seed, key)
	sh := s.shardOf(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	if ref, c := s.liveChunk(sh, key, h, now); ref != 0 {
		sh.fetched(ref, c, now)
	}
}

// Sweep examines up to n items, spread over the shards, and removes the expired and flushed ones
// (the hook runs for each). It returns how many it removed. Expiry is otherwise lazy; a server may
// call Sweep periodically to return the memory of items nobody asks for. Each shard is locked
// for at most ceil(n/Shards) items. Sweep also runs the rebalancer (see SetAutomove) at most once
// a second.
func (s *Store) Sweep(n int) int {
	if n <= 0 {
		return 0
	}
	per := (n + len(s.shards) - 1) / len(s.shards)
	start := int(s.sweepNext.Add(1) % uint64(len(s.shards)))
	removed := 0
	for i := range s.shards {
		sh := &s.shards[(start+i)%len(s.shards)]
		removed += s.sweepShard(sh, per)
	}
	s.maybeAutomove()
	return removed
}

// sweepShard examines up to n items of sh, continuing where the last sweep of sh stopped.
func (s *Store) sweepShard(sh *shard, n int) int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	removed := 0
	nb := len(sh.buckets)
	for i := 0; i < nb && n > 0; i++ {
		b := sh.sweepBucket % nb
		ref := sh.buckets[b]
		for skip := sh.sweepSkip; skip > 0 && ref != 0; skip-- {
			ref = u32(sh.chunk(ref), hHnext)
		}
		for ref != 0 && n > 0 {
			next := u32(sh.chunk(ref), hHnext)
			n--
			sh.sweepSkip++
			if s.reap(sh, ref, sh.hashOf(ref), now) {
				removed++
				sh.sweepSkip--
			}
			ref = next
		}
		if ref == 0 {
			sh.sweepBucket, sh.sweepSkip = b+1, 0
		}
	}
	return removed
}

// FlushAll invalidates items the way memcached's flush_all does. A delay <= 0 invalidates every
// item stored so far, at once; otherwise every item stored before now+delay becomes invalid at
// now+delay (memcached's oldest_live), and a later FlushAll replaces a pending one. It is O(1):
// invalid items are dropped when found. Hook.Flushed(deadline) is called with every shard lock
// held.
func (s *Store) FlushAll(delay time.Duration) {
	for i := range s.shards {
		s.shards[i].mu.Lock()
	}
	defer func() {
		for i := range s.shards {
			s.shards[i].mu.Unlock()
		}
	}()
	now := s.now()
	old := s.flush.Load()
	fs := &flushState{seq: old.seq, before: old.before}
	// A deadline that has passed stays in force, so a new flush cannot revive its items.
	if old.pending != 0 && old.pending <= now.UnixNano() && old.pending > fs.before {
		fs.before = old.pending
	}
	deadline := now
	if delay <= 0 {
		// Every Replace or Install so far took a shard lock we hold, so its seq is at most the
		// counter now: this separates older items from newer ones even within one clock tick.
		fs.seq = s.cas.Load()
	} else {
		deadline = now.Add(delay)
		fs.pending = deadline.UnixNano()
	}
	s.flush.Store(fs)
	s.flushes.Add(1)
	if s.hook != nil {
		s.hook.Flushed(deadline)
	}
}

// flushState records flush_all deadlines. It is immutable once published.
type flushState struct {
	// seq: items with a stored seq at most seq were flushed by an immediate flush_all.
	seq uint64
	// before: items stored at or before this unix-nano time were flushed by a delayed flush_all
	// whose deadline has passed (0: none).
	before int64
	// pending: a delayed flush_all's deadline in unix nanos (0: none); it takes effect once the
	// clock reaches it, for items stored at or before it.
	pending int64
}

// flushed reports whether the item in head chunk c is flushed. Its seq is the store counter
// value taken by its last Replace or Install: the CAS for a Replace, not for an Install, so
// flush_all never depends on a CAS.
func (f *flushState) flushed(c []byte, nowNano int64) bool {
	if u64(c, hSeq) <= f.seq {
		return true
	}
	stored := int64(u64(c, hStored))
	if f.before != 0 && stored <= f.before {
		return true
	}
	return f.pending != 0 && f.pending <= nowNano && stored <= f.pending
}

// RaiseCAS makes every CAS unique the store assigns from now on larger than min. A store that
// takes items over from another one with Install raises it past their largest CAS, so that a
// later Replace cannot hand out a unique some client already holds for an older version.
func (s *Store) RaiseCAS(min uint64) {
	for {
		cur := s.cas.Load()
		if cur >= min || s.cas.CompareAndSwap(cur, min) {
			return
		}
	}
}

// Keys returns the keys held, live or not yet found dead, in no order. It locks one shard at a
// time; it is meant for debugging and tests.
func (s *Store) Keys() []string {
	var keys []string
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.each(func(ref uint32) { keys = append(keys, string(chunkKey(sh.chunk(ref)))) })
		sh.mu.Unlock()
	}
	return keys
}

// shard is one lock's worth of the store.
type shard struct {
	// The first cache line holds what every operation reads and writes under the lock, with
	// the lock; the second what operations only read. With the lock taken on one core after
	// another, each line written is one more to move between them.
	mu      sync.Mutex
	bump    uint32   // access counter: each LRU bump takes the next value
	count   int      // items in the index
	bytes   int64    // sum of the items' sizes
	buckets []uint32 // hash index of head refs
	sl      *slabs

	lists       []classList // per size class
	budget      int64       // MemoryLimit / Shards
	id          int
	seed        maphash.Seed
	sweepBucket int // where the next sweep of this shard starts
	sweepSkip   int

	cur Item // Do's and View's scratch item

	// Keep shards that sit next to each other in the slice on separate cache lines.
	_ [64]byte
}

func (sh *shard) init(id int, budget int64, sl *slabs, seed maphash.Seed) {
	sh.id, sh.budget, sh.sl, sh.seed = id, budget, sl, seed
	sh.buckets = offHeapUint32(initialBuckets)
	sh.lists = make([]classList, len(sl.classes))
}

// class returns the size class of ref's chunk.
func (sh *shard) class(ref uint32) int { return sh.sl.pages[ref>>refChunkBits].class }

// itemClass returns the class whose list holds the item at head ref and counts it: its head
// chunk's, or for a chain the largest class, where memcached lists and counts a chained item
// although its head chunk is a small one.
func (sh *shard) itemClass(ref uint32) int {
	if sh.chunk(ref)[hBits]&bitChained != 0 {
		return sh.sl.largest()
	}
	return sh.class(ref)
}

func (sh *shard) hashOf(ref uint32) uint64 {
	return maphash.Bytes(sh.seed, chunkKey(sh.chunk(ref)))
}

// itemSizeOf is itemSize of the item at head ref.
func (sh *shard) itemSizeOf(ref uint32) int64 {
	c := sh.chunk(ref)
	return int64(c[hKlen]) + int64(chunkVlen(c)) + ItemOverhead
}

// fitsInPlace reports whether key's new value fits the one chunk of the item at old, in the
// same class.
func (sh *shard) fitsInPlace(old uint32, key string, value []byte) bool {
	if sh.chunk(old)[hBits]&bitChained != 0 {
		return false
	}
	return sh.sl.classFor(hdrSize+len(key)+len(value)) == sh.class(old)
}

// link enters a new item into the index, its class's LRU head and the accounts.
func (sh *shard) link(ref uint32, cls int, h uint64, size int64) {
	sh.indexInsert(ref, h)
	sh.pushFront(cls, ref, sh.chunk(ref))
	l := &sh.lists[cls]
	l.n++
	l.requested += size
	l.st.totalItems++
	sh.bytes += size
}

// remove takes the item at head ref out of the index, its LRU and the accounts, and frees its
// chunks. h is the hash of its key.
func (sh *shard) remove(ref uint32, h uint64) {
	cls := sh.itemClass(ref)
	size := sh.itemSizeOf(ref)
	sh.unlinkLRU(cls, ref, sh.chunk(ref))
	sh.indexRemove(ref, h)
	l := &sh.lists[cls]
	l.n--
	l.requested -= size
	sh.bytes -= size
	c := sh.chunk(ref)
	if c[hBits]&bitChained == 0 {
		sh.sl.release(ref)
		return
	}
	refs := []uint32{ref}
	for r := u32(c, hdrSize+int(c[hKlen])); r != 0; r = u32(sh.chunk(r), 0) {
		refs = append(refs, r)
	}
	sh.sl.release(refs...)
}

// load sets *it to the item in head chunk c. Its Value shares the chunk's bytes unless own is
// set or the value spans a chain of chunks. It writes the fields one by one: a struct built
// whole and then copied is read back in wider moves than it was written in, which stalls.
func (sh *shard) load(c []byte, own bool, it *Item) {
	bits := c[hBits]
	it.Flags = u32(c, hFlags)
	it.Exptime = int64(u64(c, hExp))
	it.CAS = u64(c, hCAS)
	it.LastAccess = int64(u32(c, hAccess))
	it.Fetched = bits&bitFetched != 0
	it.Stale = bits&bitStale != 0
	it.WinIssued = bits&bitWin != 0
	klen, vlen := int(c[hKlen]), chunkVlen(c)
	if bits&bitChained == 0 {
		v := c[hdrSize+klen : hdrSize+klen+vlen : hdrSize+klen+vlen]
		if own {
			v = append(make([]byte, 0, vlen), v...)
		}
		it.Value = v
		return
	}
	v := make([]byte, 0, vlen)
	for r := u32(c, hdrSize+klen); r != 0; {
		cc := sh.chunk(r)
		v = append(v, cc[contHdr:min(len(cc), contHdr+vlen-len(v))]...)
		r = u32(cc, 0)
	}
	it.Value = v[:vlen]
}

// sameValue reports whether v is the value stored at head ref: the very bytes load handed out
// for a one-chunk item, equal bytes for a chained one.
func (sh *shard) sameValue(ref uint32, v []byte) bool {
	c := sh.chunk(ref)
	klen, vlen := int(c[hKlen]), chunkVlen(c)
	if len(v) != vlen {
		return false
	}
	if c[hBits]&bitChained == 0 {
		return vlen == 0 || &v[0] == &c[hdrSize+klen]
	}
	var stored Item
	sh.load(c, false, &stored)
	return string(stored.Value) == string(v)
}

// saveMeta writes it's fields other than the value into the head chunk at ref.
func (sh *shard) saveMeta(ref uint32, it *Item) {
	c := sh.chunk(ref)
	put32(c, hFlags, it.Flags)
	put64(c, hExp, uint64(it.Exptime))
	put64(c, hCAS, it.CAS)
	put32(c, hAccess, uint32(it.LastAccess))
	bits := c[hBits] & (bitChained | bitActive)
	if it.Fetched {
		bits |= bitFetched
	}
	if it.Stale {
		bits |= bitStale
	}
	if it.WinIssued {
		bits |= bitWin
	}
	c[hBits] = bits
}

// fetched records a fetch of the item at head ref, in chunk c.
func (sh *shard) fetched(ref uint32, c []byte, now time.Time) {
	// Written only when they change: a read of an item read before within the same second
	// then leaves its header's cache lines clean, and another core reading it has no
	// modified line to fetch.
	if c[hBits]&bitFetched == 0 {
		c[hBits] |= bitFetched
	}
	if sec := uint32(now.Unix()); u32(c, hAccess) != sec {
		put32(c, hAccess, sec)
	}
	if c[hBits]&bitActive == 0 {
		c[hBits] |= bitActive
	}
	sh.lists[sh.itemClass(ref)].st.getHits++
}
