package cache

import (
	"errors"
	"hash/maphash"
	"slices"
)

// The rebalancer moves a page from one size class to another (or to the global pool), as
// memcached's slab mover does, so that a shift in item sizes does not leave memory stranded in
// a class nobody stores into. A page is emptied first: each item in it is copied to a free chunk
// of its class elsewhere when there is one (a rescue), and evicted otherwise.

var (
	// ErrBadClass: a reassign named a class that does not exist.
	ErrBadClass = errors.New("cache: invalid src or dst class id")
	// ErrSameClass: a reassign's source and destination are the same class.
	ErrSameClass = errors.New("cache: src and dst class are identical")
	// ErrNoSpare: a reassign's source class has fewer than two pages.
	ErrNoSpare = errors.New("cache: source class has no spare pages")
	// ErrBusy: another page move is under way.
	ErrBusy = errors.New("cache: page move in progress")
)

// Reassign moves one page from class src to class dst, as memcached's "slabs reassign" does:
// dst 0 is the global page pool, src -1 picks the class with the most pages. It returns once the
// page is moved; its items were rescued or evicted (the hook runs for each eviction).
func (s *Store) Reassign(src, dst int) error {
	sl := s.sl
	if src == dst {
		return ErrSameClass
	}
	sl.mu.Lock()
	if src == -1 {
		// As memcached: the class with the most pages among those with one to spare; none
		// leaves src -1, a bad class.
		most := 1
		for cls := 1; cls < len(sl.classes); cls++ {
			if cls != dst && len(sl.classes[cls].pages) > most {
				src, most = cls, len(sl.classes[cls].pages)
			}
		}
	}
	// Class 0 is the global page pool, which holds no pages here: never a source to spare one.
	bad := src < 0 || src >= len(sl.classes) || dst < 0 || dst >= len(sl.classes)
	spare := !bad && src > 0 && len(sl.classes[src].pages) >= 2
	sl.mu.Unlock()
	switch {
	case bad:
		return ErrBadClass
	case !spare:
		return ErrNoSpare
	}
	if !s.rebalancing.TryLock() {
		return ErrBusy
	}
	defer s.rebalancing.Unlock()
	return s.movePage(src, dst)
}

// movePage empties one page of class src and gives it to dst. s.rebalancing is held.
func (s *Store) movePage(src, dst int) error {
	sl := s.sl
	sl.mu.Lock()
	c := &sl.classes[src]
	if len(c.pages) < 2 {
		sl.mu.Unlock()
		return ErrNoSpare
	}
	// The page with the fewest chunks in use costs the fewest moves.
	pn := c.pages[0]
	for _, p := range c.pages[1:] {
		if sl.pages[p].used < sl.pages[pn].used {
			pn = p
		}
	}
	p := &sl.pages[pn]
	p.draining = true
	c.free = slices.DeleteFunc(c.free, func(ref uint32) bool { return ref>>refChunkBits == pn })
	var owners []int
	for _, o := range p.owner {
		if o != 0 {
			owners = append(owners, int(o&ownerShard)-1)
		}
	}
	sl.mu.Unlock()
	slices.Sort(owners)
	owners = slices.Compact(owners)

	for _, id := range owners {
		sh := &s.shards[id]
		sh.mu.Lock()
		sl.mu.Lock()
		var refs []uint32
		for i, o := range p.owner {
			if o != 0 && int(o&ownerShard)-1 == id {
				refs = append(refs, pn<<refChunkBits|uint32(i))
			}
		}
		conts := make([]bool, len(refs))
		for i, ref := range refs {
			conts[i] = p.owner[ref&refChunkMask]&ownerCont != 0
		}
		sl.mu.Unlock()
		for i, ref := range refs {
			s.evacuate(sh, ref, conts[i])
		}
		sh.mu.Unlock()
	}

	sl.mu.Lock()
	defer sl.mu.Unlock()
	if p.used != 0 {
		panic("cache: a draining page kept chunks in use")
	}
	c.pages = slices.DeleteFunc(c.pages, func(x uint32) bool { return x == pn })
	if dst == 0 {
		p.class, p.draining = 0, false
		sl.pool = append(sl.pool, pn)
	} else {
		sl.assign(pn, dst)
	}
	sl.slabsMoved++
	return nil
}

// evacuate frees ref, a chunk in a draining page used by shard sh (whose lock is held): an item
// is copied to a free chunk of its class if there is one, else evicted; a continuation chunk's
// item is evicted. A chunk freed meanwhile (an earlier eviction in this page took its chain) is
// left alone.
func (s *Store) evacuate(sh *shard, ref uint32, cont bool) {
	sl := s.sl
	sl.mu.Lock()
	inUse := sl.pages[ref>>refChunkBits].owner[ref&refChunkMask] != 0
	sl.mu.Unlock()
	if !inUse {
		return
	}
	if cont {
		s.drop(sh, u32(sh.chunk(ref), 4))
		sl.mu.Lock()
		sl.reassignEvictions++
		sl.mu.Unlock()
		return
	}
	nref, ok := sl.alloc(sh.class(ref), sh.id, false) // rescue into free chunks only, as memcached
	if !ok {
		s.drop(sh, ref)
		sl.mu.Lock()
		sl.reassignEvictions++
		sl.mu.Unlock()
		return
	}
	old, c := sh.chunk(ref), sh.chunk(nref)
	copy(c, old)
	h := sh.hashOf(ref)
	// Point the LRU neighbours, the hash chain and any continuations at the copy.
	l := &sh.lists[sh.itemClass(nref)]
	if prev := u32(c, hPrev); prev != 0 {
		put32(sh.chunk(prev), hNext, nref)
	} else {
		l.head = nref
	}
	if next := u32(c, hNext); next != 0 {
		put32(sh.chunk(next), hPrev, nref)
	} else {
		l.tail = nref
	}
	if b := sh.bucket(h); *b == ref {
		*b = nref
	} else {
		r := *b
		for u32(sh.chunk(r), hHnext) != ref {
			r = u32(sh.chunk(r), hHnext)
		}
		put32(sh.chunk(r), hHnext, nref)
	}
	if c[hBits]&bitChained != 0 {
		for r := u32(c, hdrSize+int(c[hKlen])); r != 0; r = u32(sh.chunk(r), 0) {
			put32(sh.chunk(r), 4, nref)
		}
	}
	sl.mu.Lock()
	sl.releaseLocked(ref)
	sl.reassignRescues++
	sl.mu.Unlock()
}

// drop removes the item at head ref for the rebalancer; the hook runs. memcached counts these
// apart from evictions (slab_reassign_evictions_nomem), and so does the store.
func (s *Store) drop(sh *shard, ref uint32) {
	key := string(chunkKey(sh.chunk(ref)))
	sh.remove(ref, maphash.String(s.seed, key))
	s.changed(key)
}

// Automove thresholds, after memcached's: a class with this many pages' worth of free chunks
// gives a page back to the global pool; a class that evicted in automoveStreak consecutive
// checks takes a page from one that evicted in none of them.
const (
	automoveFreePages = 2.5
	automoveStreak    = 3
)

// maybeAutomove runs one automove check if the mode allows it and a second has passed since the
// last one.
func (s *Store) maybeAutomove() {
	mode := s.automove.Load()
	if mode == 0 {
		return
	}
	now := s.now().Unix()
	last := s.lastAutomove.Load()
	if now-last < 1 || !s.lastAutomove.CompareAndSwap(last, now) {
		return
	}
	if !s.rebalancing.TryLock() {
		return
	}
	defer s.rebalancing.Unlock()
	if src, dst := s.automoveChoice(int(mode)); src != 0 {
		_ = s.movePage(src, dst) // ErrNoSpare only if the class shrank meanwhile
	}
}

// automoveChoice updates each class's eviction streaks and picks a page move, src 0 for none.
func (s *Store) automoveChoice(mode int) (src, dst int) {
	sl := s.sl
	evicted := make([]uint64, len(sl.classes))
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for cls := range sh.lists {
			evicted[cls] += sh.lists[cls].st.evicted
		}
		sh.mu.Unlock()
	}
	need := automoveStreak
	if mode == 2 {
		need = 1
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	var most uint64
	for cls := 1; cls < len(sl.classes); cls++ {
		c := &sl.classes[cls]
		delta := evicted[cls] - c.lastEvicted
		c.lastEvicted = evicted[cls]
		if delta > 0 {
			c.evictedStreak++
			c.quietStreak = 0
		} else {
			c.quietStreak++
			c.evictedStreak = 0
		}
		if c.evictedStreak >= need && delta > most {
			dst, most = cls, delta
		}
	}
	// Free memory first: a class holding plenty of free chunks gives a page to the pool.
	for cls := 1; cls < len(sl.classes); cls++ {
		c := &sl.classes[cls]
		if len(c.pages) >= 2 && float64(len(c.free)) >= automoveFreePages*float64(c.perPage) {
			return cls, 0
		}
	}
	if dst == 0 {
		return 0, 0
	}
	// Then a quiet class with the most pages gives one to the class that keeps evicting.
	pages := 1
	for cls := 1; cls < len(sl.classes); cls++ {
		c := &sl.classes[cls]
		if cls != dst && c.quietStreak >= need && len(c.pages) > pages {
			src, pages = cls, len(c.pages)
		}
	}
	if src != 0 {
		sl.classes[dst].evictedStreak = 0
	}
	return src, dst
}
