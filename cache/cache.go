// Package cache is the userspace item store of xdpcache: items with flags, expiry and CAS uniques,
// kept under a memory limit with LRU eviction, following memcached 1.6 semantics.
//
// A Store is safe for concurrent use. Keys are hashed to shards; each shard has its own mutex, map,
// LRU list and a memory budget of MemoryLimit/Shards. Per-shard LRUs approximate memcached's
// per-slab-class LRUs: eviction picks the least recently used item of the shard the new item
// lands in, not of the whole store.
//
// Every change to an item is reported to the Hook while the key's shard lock is held, before the
// operation returns, so a caller that replies after Do returns replies after the hook ran, and no
// other operation on the same key can interleave with the hook.
//
// MemoryLimit counts what memcached counts: key, value and ItemOverhead per item. The Go heap
// behind an item (map slot, list links, the Item struct) is larger than ItemOverhead, so the
// process uses more than MemoryLimit for small items, as memcached uses more than -m for its
// hash table and slab rounding; it stays proportional to the limit.
//
// Expiry and flush_all are lazy: dead items are removed when an operation finds them, when
// eviction reaches them, or by Sweep. Until then they count in Stats.CurrItems and Bytes.
package cache

import (
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// Item is one stored item. Value is never modified in place once stored (replace the slice).
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
}

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
	// Shards is the number of lock shards. 0 picks a default: up to 64, fewer when the memory
	// limit is small, so that every shard's budget holds at least shardMinItems items of
	// MaxItemSize.
	Shards int
	// Now is the clock, for tests; nil means time.Now.
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
	// ErrNoMemory is returned when an item cannot fit even after eviction (it is larger than the
	// shard's budget). The old item under the key is removed, as for ErrTooLarge.
	ErrNoMemory = errors.New("cache: out of memory")
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

// Store is the item store. Create it with New.
type Store struct {
	shards      []shard
	seed        maphash.Seed
	now         func() time.Time
	hook        Hook
	maxItemSize int64
	memoryLimit int64

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
		s.now = time.Now
	}
	if s.maxItemSize <= 0 {
		s.maxItemSize = DefaultMaxItemSize
	}
	if s.memoryLimit <= 0 {
		s.memoryLimit = DefaultMemoryLimit
	}
	n := cfg.Shards
	if n <= 0 {
		n = defaultShards
		for n > 1 && s.memoryLimit/int64(n) < shardMinItems*s.maxItemSize {
			n /= 2
		}
	}
	s.shards = make([]shard, n)
	budget := s.memoryLimit / int64(n)
	for i := range s.shards {
		s.shards[i].init(budget)
	}
	s.flush.Store(&flushState{})
	return s
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
	h := maphash.String(s.seed, key)
	return &s.shards[h%uint64(len(s.shards))]
}

func itemSize(key string, value []byte) int64 {
	return int64(len(key)) + int64(len(value)) + ItemOverhead
}

// Do runs fn under key's lock with the live item: nil if absent, expired or flushed (expired and
// flushed items found here are removed and the hook runs). fn must not call back into the Store,
// except Now and Exptime, which take no lock. fn may change *cur only when it returns Keep (access
// state) or Modify; *cur is valid only until Do returns.
//
// For Replace, next's size is checked against MaxItemSize (ErrTooLarge) and the shard's budget
// (ErrNoMemory); on either error the old item is removed (hook runs). Otherwise other items of the
// shard are evicted in LRU order until next fits (hook runs for each), next.CAS is set to a fresh
// unique, and a copy of *next is stored.
//
// Install is Replace keeping next.CAS. Do returns the CAS of the stored item for Replace and
// Install, else 0.
func (s *Store) Do(key string, fn func(cur *Item) (next *Item, op Op)) (cas uint64, err error) {
	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	now := s.now()
	e := s.live(sh, key, now)
	var cur *Item
	if e != nil {
		cur = &e.item
	}
	next, op := fn(cur)

	switch op {
	case Keep:
		if e != nil {
			sh.lru.moveToFront(e)
		}
		return 0, nil
	case Modify:
		if e == nil {
			return 0, nil
		}
		return 0, s.modified(sh, e, now)
	case Delete:
		if e != nil {
			sh.remove(e)
			s.changed(e.key)
		}
		return 0, nil
	case Replace:
		if next == nil {
			return 0, ErrInvalidOp
		}
		return s.store(sh, key, e, next, now, false)
	case Install:
		if next == nil {
			return 0, ErrInvalidOp
		}
		return s.store(sh, key, e, next, now, true)
	default:
		return 0, ErrInvalidOp
	}
}

// store puts next under key, replacing e (nil if none); keepCAS keeps next.CAS (Install). The
// shard lock is held.
func (s *Store) store(sh *shard, key string, e *entry, next *Item, now time.Time, keepCAS bool) (uint64, error) {
	size := itemSize(key, next.Value)
	if err := s.checkSize(sh, size); err != nil {
		if e != nil {
			sh.remove(e)
			s.changed(key)
		}
		return 0, err
	}
	seq := s.cas.Add(1)
	if !keepCAS {
		next.CAS = seq
	}
	next.LastAccess = now.Unix()
	if e == nil {
		e = &entry{key: key}
		sh.items[key] = e
		sh.lru.pushFront(e)
	} else {
		sh.bytes -= e.size
		sh.lru.moveToFront(e)
	}
	e.item = *next
	e.seq = seq
	e.size = size
	e.stored = now.UnixNano()
	sh.bytes += size
	sh.totalItems++
	s.makeRoom(sh, e, now)
	s.changed(key)
	return next.CAS, nil
}

// modified accounts for an in-place change of e: a Modify that swapped the value changes its
// size, which must obey the same limits as a store. The shard lock is held.
func (s *Store) modified(sh *shard, e *entry, now time.Time) error {
	size := itemSize(e.key, e.item.Value)
	if size != e.size {
		if err := s.checkSize(sh, size); err != nil {
			sh.remove(e)
			s.changed(e.key)
			return err
		}
		sh.bytes += size - e.size
		e.size = size
	}
	sh.lru.moveToFront(e)
	s.makeRoom(sh, e, now)
	s.changed(e.key)
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

// evictSearch is how many items from the LRU tail eviction looks at for an expired or flushed one
// to reclaim before it evicts a live item (memcached looks at 5).
const evictSearch = 5

// makeRoom evicts items other than keep until the shard is within budget. The shard lock is held.
func (s *Store) makeRoom(sh *shard, keep *entry, now time.Time) {
	fs := s.flush.Load()
	nowSec, nowNano := now.Unix(), now.UnixNano()
	for sh.bytes > sh.budget {
		victim := sh.lru.back()
		// Prefer memory whose item is dead anyway.
		for i, e := 0, victim; i < evictSearch && e != nil; i, e = i+1, sh.lru.prev(e) {
			if e != keep && (expired(&e.item, nowSec) || fs.flushed(e, nowNano)) {
				victim = e
				break
			}
		}
		if victim == keep {
			victim = sh.lru.prev(keep)
		}
		if victim == nil {
			return // only keep is left, and checkSize guaranteed it fits
		}
		switch {
		case expired(&victim.item, nowSec):
			sh.reclaimed++
			sh.expired++
			if !victim.item.Fetched {
				sh.expiredUnfetched++
			}
		case fs.flushed(victim, nowNano):
			sh.reclaimed++
		default:
			sh.evictions++
			if !victim.item.Fetched {
				sh.evictedUnfetched++
			}
		}
		sh.remove(victim)
		s.changed(victim.key)
	}
}

// live returns key's entry if it is live, removing it (hook runs) if it is expired or flushed.
// The shard lock is held.
func (s *Store) live(sh *shard, key string, now time.Time) *entry {
	e := sh.items[key]
	if e == nil {
		return nil
	}
	if s.reap(sh, e, now) {
		return nil
	}
	return e
}

// reap removes e if it is expired or flushed and reports whether it did. The shard lock is held.
func (s *Store) reap(sh *shard, e *entry, now time.Time) bool {
	switch {
	case expired(&e.item, now.Unix()):
		sh.expired++
		if !e.item.Fetched {
			sh.expiredUnfetched++
		}
	case s.flush.Load().flushed(e, now.UnixNano()):
	default:
		return false
	}
	sh.remove(e)
	s.changed(e.key)
	return true
}

func expired(it *Item, nowSec int64) bool {
	return it.Exptime != 0 && it.Exptime <= nowSec
}

func (s *Store) changed(key string) {
	if s.hook != nil {
		s.hook.Changed(key)
	}
}

// Get returns a copy of key's live item and records the fetch: Fetched, LastAccess = now and an
// LRU bump. The copy shows the access state from before this fetch (what meta flags h and l
// report). The hook runs only if an expired or flushed item was removed.
func (s *Store) Get(key string) (Item, bool) {
	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	e := s.live(sh, key, now)
	if e == nil {
		return Item{}, false
	}
	it := e.item
	e.item.Fetched = true
	e.item.LastAccess = now.Unix()
	sh.lru.moveToFront(e)
	return it, true
}

// RecordFetch records a fetch of key that was answered elsewhere (the kernel cache): Fetched,
// LastAccess = now and an LRU bump, as Get does, without copying the item. Nothing happens for a
// key that is gone; an expired or flushed one is removed (the hook runs).
func (s *Store) RecordFetch(key string) {
	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	if e := s.live(sh, key, now); e != nil {
		e.item.Fetched = true
		e.item.LastAccess = now.Unix()
		sh.lru.moveToFront(e)
	}
}

// Sweep examines up to n items, spread over the shards, and removes the expired and flushed ones
// (the hook runs for each). It returns how many it removed. Expiry is otherwise lazy; a server may
// call Sweep periodically to return the memory of items nobody asks for. Each shard is locked
// for at most ceil(n/Shards) items.
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
	return removed
}

func (s *Store) sweepShard(sh *shard, n int) int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	removed := 0
	// Map iteration starts at a random point, so successive sweeps sample different items.
	// Deleting the current entry during range is allowed.
	for _, e := range sh.items {
		if n == 0 {
			break
		}
		n--
		if s.reap(sh, e, now) {
			removed++
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
	// seq: items with an entry.seq at most seq were flushed by an immediate flush_all.
	seq uint64
	// before: items stored at or before this unix-nano time were flushed by a delayed flush_all
	// whose deadline has passed (0: none).
	before int64
	// pending: a delayed flush_all's deadline in unix nanos (0: none); it takes effect once the
	// clock reaches it, for items stored at or before it.
	pending int64
}

func (f *flushState) flushed(e *entry, nowNano int64) bool {
	if e.seq <= f.seq {
		return true
	}
	if f.before != 0 && e.stored <= f.before {
		return true
	}
	return f.pending != 0 && f.pending <= nowNano && e.stored <= f.pending
}

// Stats are the store's counters, named after memcached's.
type Stats struct {
	CurrItems        uint64 // items held, including expired or flushed ones not yet found
	TotalItems       uint64 // items stored since start
	Bytes            uint64 // bytes of the items held (key + value + ItemOverhead)
	Evictions        uint64 // live items removed to make room
	Expired          uint64 // items removed because they expired
	Reclaimed        uint64 // times an expired or flushed item's memory was taken for a new one
	ExpiredUnfetched uint64 // expired items that were never fetched
	EvictedUnfetched uint64 // evicted items that were never fetched
	LimitMaxBytes    int64  // the memory limit
	Flushes          uint64 // FlushAll calls
}

// Stats sums the shards' counters; each shard is read under its lock, so the sum is not one
// atomic snapshot of the whole store.
func (s *Store) Stats() Stats {
	st := Stats{LimitMaxBytes: s.memoryLimit, Flushes: s.flushes.Load()}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		st.CurrItems += uint64(len(sh.items))
		st.TotalItems += sh.totalItems
		st.Bytes += uint64(sh.bytes)
		st.Evictions += sh.evictions
		st.Expired += sh.expired
		st.Reclaimed += sh.reclaimed
		st.ExpiredUnfetched += sh.expiredUnfetched
		st.EvictedUnfetched += sh.evictedUnfetched
		sh.mu.Unlock()
	}
	return st
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
		for k := range sh.items {
			keys = append(keys, k)
		}
		sh.mu.Unlock()
	}
	return keys
}

// shard is one lock's worth of the store.
type shard struct {
	mu     sync.Mutex
	items  map[string]*entry
	lru    lruList
	bytes  int64 // sum of the items' sizes
	budget int64 // MemoryLimit / Shards

	totalItems, evictions, expired, reclaimed, expiredUnfetched, evictedUnfetched uint64

	// Keep shards that sit next to each other in the slice on separate cache lines.
	_ [64]byte
}

func (sh *shard) init(budget int64) {
	sh.items = make(map[string]*entry)
	sh.lru.init()
	sh.budget = budget
}

func (sh *shard) remove(e *entry) {
	delete(sh.items, e.key)
	sh.lru.remove(e)
	sh.bytes -= e.size
}

// entry is an item in a shard's map and LRU list.
type entry struct {
	key  string
	item Item
	size int64 // itemSize at the last store or resize
	// seq is the store's counter value taken by the last Replace or Install: the item's CAS for a
	// Replace, not for an Install. Immediate flush_all compares it, never the CAS.
	seq        uint64
	stored     int64 // unix nanos of the last Replace, for delayed flush_all
	prev, next *entry
}

// lruList is an intrusive doubly linked list with a sentinel: front is most recently used.
type lruList struct {
	root entry
}

func (l *lruList) init() {
	l.root.next = &l.root
	l.root.prev = &l.root
}

func (l *lruList) pushFront(e *entry) {
	e.prev = &l.root
	e.next = l.root.next
	l.root.next.prev = e
	l.root.next = e
}

func (l *lruList) remove(e *entry) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func (l *lruList) moveToFront(e *entry) {
	if l.root.next == e {
		return
	}
	l.remove(e)
	l.pushFront(e)
}

// back returns the least recently used entry, nil if the list is empty.
func (l *lruList) back() *entry {
	if l.root.prev == &l.root {
		return nil
	}
	return l.root.prev
}

// prev returns the entry used just more recently than e, nil at the front.
func (l *lruList) prev(e *entry) *entry {
	if e.prev == &l.root {
		return nil
	}
	return e.prev
}
