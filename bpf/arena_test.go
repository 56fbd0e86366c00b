package bpf

import (
	"encoding/binary"
	"strings"
	"testing"
)

func TestEntryHeaderLayout(t *testing.T) {
	if n := binary.Size(xdpcacheEntryHdr{}); n != entryHdrBytes {
		t.Fatalf("struct entry_hdr is %d bytes, entryHdrBytes says %d", n, entryHdrBytes)
	}
	// index.go addresses slots as two 8-byte words: hash, then loc|used|referenced.
	if n := binary.Size(xdpcacheIndexSlot{}); n != 16 {
		t.Fatalf("struct index_slot is %d bytes, index.go assumes 16", n)
	}
	if n := binary.Size(xdpcacheArenaPage{}); n != pageStride {
		t.Fatalf("struct arena_page is %d bytes, pageStride says %d", n, pageStride)
	}
	// The largest entry the program can serve (longest key, widest flags and CAS, the value
	// that fills the datagram) fits the largest chunk.
	key := strings.Repeat("k", keyMax)
	largest := 0
	for n := 0; n < maxPayload; n++ {
		enc := encode(key, 4294967295, make([]byte, n), 18446744073709551615)
		if frameLen+len(enc.data)+len(enc.cas)+endLen > maxPayload {
			break
		}
		largest = enc.chunkLen()
	}
	if largest == 0 || classFor(largest) < 0 {
		t.Fatalf("the largest servable entry, %d bytes, has no class", largest)
	}
}

func TestSlabs(t *testing.T) {
	s := newSlabs(3)
	seen := map[uint32]bool{}
	perPage := pageBytes / chunkSizes[0]
	var locs []uint32
	for i := 0; i < 2*perPage; i++ {
		loc, ok := s.alloc(0)
		if !ok {
			t.Fatalf("alloc %d failed with pages free", i)
		}
		if seen[loc] {
			t.Fatalf("chunk %#x handed out twice", loc)
		}
		if off := int(loc & (pageBytes - 1)); off%chunkSizes[0] != 0 || off+chunkSizes[0] > pageBytes {
			t.Fatalf("chunk %#x misplaced", loc)
		}
		seen[loc] = true
		locs = append(locs, loc)
	}
	// Two pages serve class 0; the third goes to class 9, which then has no more room.
	for i := 0; i < pageBytes/chunkSizes[9]; i++ {
		if _, ok := s.alloc(9); !ok {
			t.Fatalf("class 9 alloc %d failed", i)
		}
	}
	if _, ok := s.alloc(9); ok {
		t.Fatal("alloc succeeded with every page in use")
	}
	// Emptying a class-0 page returns it to the pool, where class 9 can take it.
	for _, loc := range locs[:perPage] {
		s.release(loc)
	}
	if _, ok := s.alloc(9); !ok {
		t.Fatal("an emptied page was not reused by another class")
	}
	// A partly freed page serves its class again.
	s.release(locs[perPage])
	if loc, ok := s.alloc(0); !ok || loc != locs[perPage] {
		t.Fatalf("alloc after release: %#x %v, want %#x", loc, ok, locs[perPage])
	}
}
