package bpf

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// index is userspace's view of index_map, mmapped: slot i is the words w[2i] (hash) and w[2i+1]
// (loc | used<<32 | referenced<<40 | fetched<<48, little-endian struct index_slot). Each word is written with
// one atomic store, so the program, which reads each word with one load, never sees a torn
// word, and a store made before Invalidate returns is visible to every later program run (an
// atomic store is a full barrier on amd64 and a release store on arm64). See cache_maps.h.
type index struct {
	mem []byte
	w   []uint64
}

const (
	slotUsed       = 1 << 32
	slotReferenced = 1 << 40
	slotFetched    = 1 << 48
)

func mapIndex(m *ebpf.Map) (*index, error) {
	size := int(m.MaxEntries()) * 16
	page := os.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (size+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap kernel cache index: %w", err)
	}
	// The mapping is page-aligned, outside the Go heap, and lives until close.
	w := unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), size/8)
	return &index{mem: mem, w: w}, nil
}

// set points slot i at loc for hash. The slot must be empty (clear it first when it changes
// keys) or already hold hash: the hash is stored before the word that makes it live.
func (x *index) set(i uint32, hash uint64, loc uint32) {
	atomic.StoreUint64(&x.w[2*i], hash)
	atomic.StoreUint64(&x.w[2*i+1], uint64(loc)|slotUsed)
}

// move copies slot from, its marks included, to the empty slot to, then empties from: the entry
// is reachable through one of them at every moment. A mark the program sets on from between the
// copy and the clear is lost, which costs one reference or one fetch report, never a wrong
// answer.
func (x *index) move(from, to uint32) {
	atomic.StoreUint64(&x.w[2*to], atomic.LoadUint64(&x.w[2*from]))
	atomic.StoreUint64(&x.w[2*to+1], atomic.LoadUint64(&x.w[2*from+1]))
	atomic.StoreUint64(&x.w[2*from+1], 0)
}

// clear empties slot i.
func (x *index) clear(i uint32) {
	atomic.StoreUint64(&x.w[2*i+1], 0)
}

// referenced reports whether slot i still points at loc and the program has marked it since the
// last takeReferenced; live is false when the slot no longer points at loc.
func (x *index) referenced(i uint32, loc uint32) (ref, live bool) {
	m := atomic.LoadUint64(&x.w[2*i+1])
	if m&slotUsed == 0 || uint32(m) != loc {
		return false, false
	}
	return m&slotReferenced != 0, true
}

// clearReferenced clears slot i's referenced flag, unless the slot changed meanwhile.
func (x *index) clearReferenced(i uint32, loc uint32) {
	m := atomic.LoadUint64(&x.w[2*i+1])
	if m&slotUsed != 0 && uint32(m) == loc {
		atomic.CompareAndSwapUint64(&x.w[2*i+1], m, m&^slotReferenced)
	}
}

// takeFetched reports whether the program has served slot i's entry at loc since the last
// takeFetched, and clears the mark. The program sets its bytes with plain stores, so a failed
// swap (a mark set meanwhile) is tried again.
func (x *index) takeFetched(i uint32, loc uint32) bool {
	for range 4 {
		m := atomic.LoadUint64(&x.w[2*i+1])
		if m&slotUsed == 0 || uint32(m) != loc || m&slotFetched == 0 {
			return false
		}
		if atomic.CompareAndSwapUint64(&x.w[2*i+1], m, m&^slotFetched) {
			return true
		}
	}
	return false
}

func (x *index) close() error {
	if x == nil || x.mem == nil {
		return nil
	}
	err := unix.Munmap(x.mem)
	x.mem, x.w = nil, nil
	return err
}
