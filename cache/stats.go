package cache

import "slices"

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

	TotalMalloced         uint64 // bytes of slab pages taken (pages x PageSize)
	SlabGlobalPagePool    uint64 // pages in the global pool, held by no class
	SlabsMoved            uint64 // pages the rebalancer moved
	SlabReassignRescues   uint64 // items the rebalancer copied out of a page it emptied
	SlabReassignEvictions uint64 // items it evicted for lack of a free chunk
	HashBytes             uint64 // bytes of the index buckets
	OutOfMemory           uint64 // stores that failed for lack of a chunk
}

// Stats sums the shards' counters; each shard is read under its lock, so the sum is not one
// atomic snapshot of the whole store.
func (s *Store) Stats() Stats {
	st := Stats{LimitMaxBytes: s.memoryLimit, Flushes: s.flushes.Load()}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		st.CurrItems += uint64(sh.count)
		st.Bytes += uint64(sh.bytes)
		st.HashBytes += 4 * uint64(len(sh.buckets))
		for cls := range sh.lists {
			c := &sh.lists[cls].st
			st.TotalItems += c.totalItems
			st.Evictions += c.evicted
			st.Expired += c.expired
			st.Reclaimed += c.reclaimed
			st.ExpiredUnfetched += c.expiredUnfetched
			st.EvictedUnfetched += c.evictedUnfetched
			st.OutOfMemory += c.outOfMemory
		}
		sh.mu.Unlock()
	}
	sl := s.sl
	sl.mu.Lock()
	st.TotalMalloced = uint64(sl.nextPage-1) * PageSize
	st.SlabGlobalPagePool = uint64(len(sl.pool))
	st.SlabsMoved = sl.slabsMoved
	st.SlabReassignRescues = sl.reassignRescues
	st.SlabReassignEvictions = sl.reassignEvictions
	sl.mu.Unlock()
	return st
}

// ClassStats describe one size class, with the fields of memcached's "stats slabs" and "stats
// items" for it.
type ClassStats struct {
	Class         int
	ChunkSize     int
	ChunksPerPage int
	TotalPages    int
	TotalChunks   int
	UsedChunks    int
	FreeChunks    int

	Items            uint64 // items whose head chunk is in the class
	MemRequested     uint64 // their bytes (key + value + ItemOverhead)
	Age              int64  // seconds since the least recently used item's last access
	Evicted          uint64
	EvictedNonzero   uint64 // evicted items that had an expiry time
	EvictedTime      int64  // seconds since the last evicted item's last access
	EvictedUnfetched uint64
	ExpiredUnfetched uint64
	Reclaimed        uint64
	OutOfMemory      uint64
	GetHits          uint64 // fetches, including those answered elsewhere (RecordFetch)
	CmdSet           uint64 // Replace and Install
	DeleteHits       uint64
	// Hits counts what commands recorded with Item.Count, by Hit (incr_hits, decr_hits,
	// cas_hits, cas_badval, touch_hits).
	Hits [numHits]uint64
}

// Classes returns the classes that have pages or items, in class order.
func (s *Store) Classes() []ClassStats {
	sl := s.sl
	sl.mu.Lock()
	out := make([]ClassStats, len(sl.classes))
	for cls := 1; cls < len(sl.classes); cls++ {
		c := &sl.classes[cls]
		out[cls] = ClassStats{
			Class:         cls,
			ChunkSize:     c.size,
			ChunksPerPage: c.perPage,
			TotalPages:    len(c.pages),
			TotalChunks:   len(c.pages) * c.perPage,
			UsedChunks:    c.used,
			FreeChunks:    len(c.free),
		}
	}
	sl.mu.Unlock()
	now := s.now().Unix()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for cls := 1; cls < len(sh.lists); cls++ {
			l, o := &sh.lists[cls], &out[cls]
			o.Items += uint64(l.n)
			o.MemRequested += uint64(l.requested)
			if l.tail != 0 {
				o.Age = max(o.Age, now-int64(u32(sh.chunk(l.tail), hAccess)))
			}
			o.Evicted += l.st.evicted
			o.EvictedNonzero += l.st.evictedNonzero
			o.EvictedTime = max(o.EvictedTime, l.st.evictedTime)
			o.EvictedUnfetched += l.st.evictedUnfetched
			o.ExpiredUnfetched += l.st.expiredUnfetched
			o.Reclaimed += l.st.reclaimed
			o.OutOfMemory += l.st.outOfMemory
			o.GetHits += l.st.getHits
			o.CmdSet += l.st.cmdSet
			o.DeleteHits += l.st.deleteHits
			for h, n := range l.st.hits {
				o.Hits[h] += n
			}
		}
		sh.mu.Unlock()
	}
	return slices.DeleteFunc(out, func(c ClassStats) bool { return c.Class == 0 || c.TotalPages == 0 && c.Items == 0 })
}

// SizeCount is one bucket of Sizes.
type SizeCount struct {
	Size  int // the bucket's upper bound, a multiple of 32
	Count uint64
}

// Sizes counts the items held by their size (header, key and value) rounded up to 32 bytes, as
// memcached's "stats sizes" does. It walks every item, one shard lock at a time.
func (s *Store) Sizes() []SizeCount {
	counts := make(map[int]uint64)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.each(func(ref uint32) {
			c := sh.chunk(ref)
			n := hdrSize + int(c[hKlen]) + chunkVlen(c)
			counts[(n+31)/32*32]++
		})
		sh.mu.Unlock()
	}
	out := make([]SizeCount, 0, len(counts))
	for size, n := range counts {
		out = append(out, SizeCount{size, n})
	}
	slices.SortFunc(out, func(a, b SizeCount) int { return a.Size - b.Size })
	return out
}
