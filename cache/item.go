package cache

import (
	"encoding/binary"
	"hash/maphash"
)

// An item lives in one chunk, or, when it does not fit the largest, in a chain as memcached 1.6
// chunks it: a head chunk of the class that fits the header, the key and the first
// continuation's ref, then continuations of the largest class but for the last, which takes the
// smallest class that fits what remains. The head chunk starts with a fixed header:
//
//	off  size  field
//	  0     4  prev: LRU neighbour towards the head (ref)
//	  4     4  next: LRU neighbour towards the tail (ref)
//	  8     4  hnext: next item in the shard's hash chain (ref)
//	 12     4  bump: the shard's access counter at the last bump, orders tails of classes
//	 16     8  seq: store counter value of the last Replace or Install (flush_all)
//	 24     8  stored: unix nanos of the last Replace or Install (delayed flush_all)
//	 32     8  CAS
//	 40     8  exptime (unix seconds, 0 never)
//	 48     4  last access (unix seconds)
//	 52     4  flags
//	 56     4  value length
//	 60     1  key length
//	 61     1  bits: fetched, stale, win issued, chained, active
//	 62        key, then the value bytes, or (chained) the first continuation's ref
//
// A continuation chunk holds the next continuation's ref, the head's ref and value bytes.
// All fields are little endian. Nothing in a chunk is a Go pointer.
const (
	hPrev    = 0
	hNext    = 4
	hHnext   = 8
	hBump    = 12
	hSeq     = 16
	hStored  = 24
	hCAS     = 32
	hExp     = 40
	hAccess  = 48
	hFlags   = 52
	hVlen    = 56
	hKlen    = 60
	hBits    = 61
	hdrSize  = 62
	contHdr  = 8 // continuation chunk: next ref, head ref
	chainRef = 4 // in a chained head, after the key
)

const (
	bitFetched = 1 << iota
	bitStale
	bitWin
	bitChained
	// bitActive: fetched since the item last moved in its list. A read only sets it; eviction
	// gives an active item at the tail a second chance (memcached's ITEM_ACTIVE).
	bitActive
)

var le = binary.LittleEndian

func u32(c []byte, off int) uint32      { return le.Uint32(c[off:]) }
func put32(c []byte, off int, v uint32) { le.PutUint32(c[off:], v) }
func u64(c []byte, off int) uint64      { return le.Uint64(c[off:]) }
func put64(c []byte, off int, v uint64) { le.PutUint64(c[off:], v) }

func chunkKey(c []byte) []byte { return c[hdrSize : hdrSize+int(c[hKlen])] }

func chunkVlen(c []byte) int { return int(u32(c, hVlen)) }

// headSpan is the bytes of a head chunk before its value: the header and the key, and in a
// chained head (which holds no value) the first continuation's ref.
func headSpan(klen int, chained bool) int {
	if chained {
		return hdrSize + klen + chainRef
	}
	return hdrSize + klen
}

// classList is one class's items in a shard: an LRU list threaded through the chunks (head is
// most recently used) and the class's counters for that shard.
type classList struct {
	head, tail uint32
	n          int64
	requested  int64 // itemSize of the items: memcached's mem_requested
	st         classCounters
}

// classCounters are per class and shard; Stats sums them.
type classCounters struct {
	totalItems, evicted, evictedNonzero, evictedUnfetched, expired, expiredUnfetched,
	reclaimed, outOfMemory, getHits, cmdSet, deleteHits uint64
	hits        [numHits]uint64 // by Hit, as Item.Count recorded them
	evictedTime int64           // seconds since the last evicted item's last access
}

func (sh *shard) chunk(ref uint32) []byte { return sh.sl.chunk(ref) }

// pushFront puts the item at ref, in head chunk c, at the head of its class's list.
func (sh *shard) pushFront(cls int, ref uint32, c []byte) {
	l := &sh.lists[cls]
	put32(c, hPrev, 0)
	put32(c, hNext, l.head)
	if l.head != 0 {
		put32(sh.chunk(l.head), hPrev, ref)
	} else {
		l.tail = ref
	}
	l.head = ref
	sh.bump++
	put32(c, hBump, sh.bump)
}

// unlinkLRU takes the item at ref, in head chunk c, out of its class's list.
func (sh *shard) unlinkLRU(cls int, ref uint32, c []byte) {
	l := &sh.lists[cls]
	prev, next := u32(c, hPrev), u32(c, hNext)
	if prev != 0 {
		put32(sh.chunk(prev), hNext, next)
	} else {
		l.head = next
	}
	if next != 0 {
		put32(sh.chunk(next), hPrev, prev)
	} else {
		l.tail = prev
	}
}

// moveToFront records a use of the item at ref: it moves to the head of its class's list, unless
// it is still in the list's front quarter. Every item ahead of it in the list was pushed or moved
// after its own last move, each taking one bump, so fewer than n/4 bumps since then mean fewer
// than n/4 items ahead. Such an item is left where it is, and its neighbours' chunks untouched,
// as memcached leaves recently bumped items alone; a list of fewer than 8 items is kept in exact
// LRU order.
func (sh *shard) moveToFront(cls int, ref uint32) {
	sh.moveChunkToFront(cls, ref, sh.chunk(ref))
}

// moveChunkToFront is moveToFront with the item's head chunk c.
func (sh *shard) moveChunkToFront(cls int, ref uint32, c []byte) {
	l := &sh.lists[cls]
	if int64(sh.bump-u32(c, hBump)) < l.n/4 {
		return
	}
	if l.head == ref {
		sh.bump++
		put32(c, hBump, sh.bump)
		return
	}
	sh.unlinkLRU(cls, ref, c)
	sh.pushFront(cls, ref, c)
}

// The index: a chained hash table of head refs, its buckets a plain []uint32, grown by doubling
// when it holds 1.5 items per bucket (memcached's assoc.c does the same).

const initialBuckets = 64

func (sh *shard) bucket(h uint64) *uint32 {
	return &sh.buckets[(h>>32)&uint64(len(sh.buckets)-1)]
}

// lookup returns key's head ref, 0 if absent.
func (sh *shard) lookup(key string, h uint64) uint32 {
	ref, _ := sh.find(key, h)
	return ref
}

// find returns key's head ref and chunk, 0 and nil if absent.
func (sh *shard) find(key string, h uint64) (uint32, []byte) {
	for ref := *sh.bucket(h); ref != 0; {
		c := sh.chunk(ref)
		if int(c[hKlen]) == len(key) && string(chunkKey(c)) == key {
			return ref, c
		}
		ref = u32(c, hHnext)
	}
	return 0, nil
}

func (sh *shard) indexInsert(ref uint32, h uint64) {
	b := sh.bucket(h)
	put32(sh.chunk(ref), hHnext, *b)
	*b = ref
	sh.count++
	if sh.count > len(sh.buckets)+len(sh.buckets)/2 {
		sh.growIndex()
	}
}

func (sh *shard) indexRemove(ref uint32, h uint64) {
	b := sh.bucket(h)
	next := u32(sh.chunk(ref), hHnext)
	if *b == ref {
		*b = next
		sh.count--
		return
	}
	for cur := *b; cur != 0; {
		c := sh.chunk(cur)
		n := u32(c, hHnext)
		if n == ref {
			put32(c, hHnext, next)
			sh.count--
			return
		}
		cur = n
	}
	panic("cache: index lost an item")
}

func (sh *shard) growIndex() {
	old := sh.buckets
	sh.buckets = offHeapUint32(2 * len(old))
	defer freeUint32(old)
	for _, ref := range old {
		for ref != 0 {
			c := sh.chunk(ref)
			next := u32(c, hHnext)
			b := sh.bucket(maphash.Bytes(sh.seed, chunkKey(c)))
			put32(c, hHnext, *b)
			*b = ref
			ref = next
		}
	}
}

// each calls fn for every head ref in the index; fn may remove the item it is given.
func (sh *shard) each(fn func(ref uint32)) {
	for i := range sh.buckets {
		for ref := sh.buckets[i]; ref != 0; {
			next := u32(sh.chunk(ref), hHnext)
			fn(ref)
			ref = next
		}
	}
}
