package cache

import (
	"sync"
)

// The slab allocator: item memory is cut into 1 MiB pages, each page into chunks of one size
// class, as memcached's slabs.c does. Pages are allocated outside the Go heap (see mem_linux.go),
// so the garbage collector neither scans them nor counts them towards its heap goal. A chunk is
// named by a ref: the page number shifted left by refChunkBits, or'ed with the chunk's index in
// the page. Ref 0 is no chunk (page 0 does not exist).

// PageSize is the size of a slab page, memcached's default -o slab_page_size.
const PageSize = 1 << 20

const (
	refChunkBits = 14
	refChunkMask = 1<<refChunkBits - 1
	// minChunkSize keeps a page's chunk count within refChunkBits.
	minChunkSize = PageSize >> refChunkBits
	// maxPerPage is the most chunks a page holds.
	maxPerPage = PageSize / minChunkSize
	// maxPageRefs is the most pages a ref can name.
	maxPageRefs = 1<<(32-refChunkBits) - 1
	// maxClasses is memcached's MAX_NUMBER_OF_SLAB_CLASSES - 1: class ids run from 1.
	maxClasses = 63
	// memcachedItemHeader is sizeof(item) in memcached 1.6 on 64-bit: the size classes are
	// computed from it so that they match memcached's for the same -n and -f.
	memcachedItemHeader = 48
	// chunkAlign is memcached's CHUNK_ALIGN_BYTES.
	chunkAlign = 8
)

// Defaults match memcached's -f 1.25 and -n 48.
const (
	DefaultGrowthFactor = 1.25
	DefaultMinChunk     = 48
)

// classSizes returns the chunk size of each class (index 0 unused) the way memcached's
// slabs_init computes them: from memcachedItemHeader + minChunk, multiplied by factor and aligned
// to 8 bytes, while below chunkMax/factor; the last class is chunkMax (half a page).
func classSizes(factor float64, minChunk int) []int {
	sizes := []int{0}
	size := uint32(max(memcachedItemHeader+minChunk, minChunkSize))
	chunkMax := uint32(PageSize / 2)
	for len(sizes) < maxClasses {
		if float64(size) >= float64(chunkMax)/factor {
			break
		}
		if size%chunkAlign != 0 {
			size += chunkAlign - size%chunkAlign
		}
		sizes = append(sizes, int(size))
		size = uint32(float64(size) * factor)
	}
	return append(sizes, int(chunkMax))
}

// page is one slab page.
type page struct {
	mem   []byte // PageSize bytes, nil until the page is first needed
	class int    // owning class; 0 while in the global pool
	size  int    // chunk size of that class
	// owner holds, per chunk, the shard index + 1 of the item using it (ownerShard bits), 0
	// when free, with ownerCont set for a chain's continuation chunk. The rebalancer reads it to
	// find which shard lock guards each chunk.
	owner    []uint8
	used     int  // chunks in use
	draining bool // being emptied by the rebalancer: its free chunks are not handed out
}

// slabClass is one size class.
type slabClass struct {
	size    int
	perPage int
	pages   []uint32 // page numbers
	free    []uint32 // free chunk refs, a stack
	used    int      // chunks in use
	// Automove bookkeeping: evictions seen at the last check and the consecutive checks the
	// class evicted (or did not).
	lastEvicted   uint64
	evictedStreak int
	quietStreak   int
}

// slabs is the allocator shared by every shard. mu guards everything in it; the chunk bytes are
// guarded by the owning shard's lock.
type slabs struct {
	mu       sync.Mutex
	classes  []slabClass // index 1..len-1
	pages    []page      // fixed length: refs index it without the lock
	nextPage int         // pages[1:nextPage] have memory
	pool     []uint32    // pages with memory and no class: memcached's global page pool
	ownerMem []byte      // every page's owner bytes, maxPerPage each, outside the Go heap
	maxPages int         // pages -m allows

	// Rebalancer counters, named after memcached's.
	slabsMoved, reassignRescues, reassignEvictions, reassignBusy uint64
}

func newSlabs(memoryLimit int64, factor float64, minChunk int) *slabs {
	sizes := classSizes(factor, minChunk)
	sl := &slabs{classes: make([]slabClass, len(sizes))}
	for i := 1; i < len(sizes); i++ {
		sl.classes[i] = slabClass{size: sizes[i], perPage: PageSize / sizes[i]}
	}
	sl.maxPages = int(memoryLimit / PageSize)
	// memcached gives every class its first page even beyond -m; room for that, and no more.
	n := min(sl.maxPages+len(sizes), maxPageRefs)
	sl.pages = make([]page, n+1)
	sl.ownerMem = offHeap(len(sl.pages) * maxPerPage)
	sl.nextPage = 1
	return sl
}

// classFor returns the smallest class whose chunks hold size bytes, 0 if none does.
func (sl *slabs) classFor(size int) int {
	lo, hi := 1, len(sl.classes)-1
	if size > sl.classes[hi].size {
		return 0
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if sl.classes[mid].size >= size {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

func (sl *slabs) largest() int { return len(sl.classes) - 1 }

// chunk returns the bytes of ref's chunk. The caller holds the lock of the shard using it (or
// the allocator's, for a free chunk).
func (sl *slabs) chunk(ref uint32) []byte {
	p := &sl.pages[ref>>refChunkBits]
	off := int(ref&refChunkMask) * p.size
	return p.mem[off : off+p.size : off+p.size]
}

// alloc takes a free chunk of class cls for shard; with none free, it takes a new page if
// mayGrow and -m allow one. It reports false when the class must evict.
func (sl *slabs) alloc(cls int, shard int, mayGrow bool) (uint32, bool) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	c := &sl.classes[cls]
	if len(c.free) == 0 && (!mayGrow || !sl.grow(cls)) {
		return 0, false
	}
	ref := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	p := &sl.pages[ref>>refChunkBits]
	p.owner[ref&refChunkMask] = uint8(shard + 1)
	p.used++
	c.used++
	return ref, true
}

// grow gives class cls one more page: from the global pool, or new memory while -m allows it
// (a class without pages always gets its first, as in memcached). sl.mu is held.
func (sl *slabs) grow(cls int) bool {
	c := &sl.classes[cls]
	var pn uint32
	switch {
	case len(sl.pool) > 0:
		pn = sl.pool[len(sl.pool)-1]
		sl.pool = sl.pool[:len(sl.pool)-1]
	case (sl.nextPage-1 < sl.maxPages || len(c.pages) == 0) && sl.nextPage < len(sl.pages):
		mem, err := mapAnon(PageSize)
		if err != nil {
			return false
		}
		pn = uint32(sl.nextPage)
		sl.pages[pn].mem = mem
		sl.nextPage++
	default:
		return false
	}
	sl.assign(pn, cls)
	return true
}

// assign cuts page pn into class cls's chunks, all free. sl.mu is held.
func (sl *slabs) assign(pn uint32, cls int) {
	c := &sl.classes[cls]
	p := &sl.pages[pn]
	p.class, p.size, p.used, p.draining = cls, c.size, 0, false
	p.owner = sl.ownerMem[int(pn)*maxPerPage:][:c.perPage:c.perPage]
	clear(p.owner)
	c.pages = append(c.pages, pn)
	// Pushed last to first, so chunks are handed out in address order.
	for i := c.perPage - 1; i >= 0; i-- {
		c.free = append(c.free, pn<<refChunkBits|uint32(i))
	}
}

// release returns chunks to their class. A chunk of a draining page is not made available.
func (sl *slabs) release(refs ...uint32) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	for _, ref := range refs {
		sl.releaseLocked(ref)
	}
}

// Bits of page.owner.
const (
	ownerShard = 1<<7 - 1
	ownerCont  = 1 << 7
)

// markContinuations records that refs are continuation chunks of a chained item.
func (sl *slabs) markContinuations(refs []uint32) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	for _, ref := range refs {
		sl.pages[ref>>refChunkBits].owner[ref&refChunkMask] |= ownerCont
	}
}

func (sl *slabs) releaseLocked(ref uint32) {
	p := &sl.pages[ref>>refChunkBits]
	p.owner[ref&refChunkMask] = 0
	p.used--
	c := &sl.classes[p.class]
	c.used--
	if !p.draining {
		c.free = append(c.free, ref)
	}
}

// freeMemory unmaps every page; the slabs must not be used afterwards.
func (sl *slabs) freeMemory() {
	for i := range sl.pages {
		if sl.pages[i].mem != nil {
			unmap(sl.pages[i].mem)
			sl.pages[i].mem = nil
		}
	}
	unmap(sl.ownerMem)
	sl.ownerMem = nil
}
