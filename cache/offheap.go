package cache

import "unsafe"

// offHeap returns n zeroed bytes outside the Go heap where the platform allows (mem_linux.go),
// else from the heap.
func offHeap(n int) []byte {
	if mem, err := mapAnon(n); err == nil {
		return mem
	}
	return make([]byte, n)
}

// offHeapUint32 is offHeap as n uint32s.
func offHeapUint32(n int) []uint32 {
	b := offHeap(4 * n)
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// freeUint32 returns what offHeapUint32 mapped.
func freeUint32(u []uint32) {
	if len(u) > 0 {
		unmap(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(u))), 4*len(u)))
	}
}
