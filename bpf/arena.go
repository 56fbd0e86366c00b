package bpf

// slabs hands out chunks of the arena map, memcached-style: the arena is cut into 64 KiB pages,
// a page serves one size class at a time, and a page whose chunks are all free goes back to the
// common pool, so classes follow the workload instead of being fixed at load. Not safe for
// concurrent use: the Cache calls it under its mutex.
//
// A chunk is freed only after its entry has been out of the index for retireAfter, so the program
// never reads a chunk being rewritten (no torn values).
type slabs struct {
	pages     []slabPage
	freePages []int
	partial   [numClasses][]int // pages of each class that may have free chunks
}

type slabPage struct {
	class     int      // -1 while in the free pool
	free      []uint16 // free chunk indexes
	inUse     int
	inPartial bool
}

func newSlabs(pages int) *slabs {
	s := &slabs{pages: make([]slabPage, pages), freePages: make([]int, 0, pages)}
	for p := pages - 1; p >= 0; p-- {
		s.pages[p].class = -1
		s.freePages = append(s.freePages, p)
	}
	return s
}

// alloc returns the arena offset of a free chunk of class c (page << 16 | offset), or false when
// the class has none and no page is free.
func (s *slabs) alloc(c int) (uint32, bool) {
	for len(s.partial[c]) > 0 {
		last := len(s.partial[c]) - 1
		p := s.partial[c][last]
		pg := &s.pages[p]
		if len(pg.free) == 0 {
			pg.inPartial = false
			s.partial[c] = s.partial[c][:last]
			continue
		}
		idx := pg.free[len(pg.free)-1]
		pg.free = pg.free[:len(pg.free)-1]
		pg.inUse++
		return uint32(p)<<pageShift | uint32(idx)*uint32(chunkSizes[c]), true
	}
	if len(s.freePages) == 0 {
		return 0, false
	}
	p := s.freePages[len(s.freePages)-1]
	s.freePages = s.freePages[:len(s.freePages)-1]
	pg := &s.pages[p]
	n := pageBytes / chunkSizes[c]
	pg.class, pg.inUse, pg.free = c, 0, make([]uint16, 0, n)
	for i := n - 1; i >= 0; i-- {
		pg.free = append(pg.free, uint16(i))
	}
	pg.inPartial = true
	s.partial[c] = append(s.partial[c], p)
	return s.alloc(c)
}

// release returns the chunk at loc to its page; an emptied page returns to the pool.
func (s *slabs) release(loc uint32) {
	p := int(loc >> pageShift)
	pg := &s.pages[p]
	c := pg.class
	pg.free = append(pg.free, uint16(int(loc&(pageBytes-1))/chunkSizes[c]))
	pg.inUse--
	if pg.inUse > 0 {
		if !pg.inPartial {
			pg.inPartial = true
			s.partial[c] = append(s.partial[c], p)
		}
		return
	}
	if pg.inPartial {
		for i, q := range s.partial[c] {
			if q == p {
				s.partial[c] = append(s.partial[c][:i], s.partial[c][i+1:]...)
				break
			}
		}
	}
	*pg = slabPage{class: -1}
	s.freePages = append(s.freePages, p)
}
