package cache

import (
	"fmt"
	"syscall"
)

// allocPage maps an anonymous page outside the Go heap: the collector never scans it and it does
// not count towards the heap goal, so a store of many gigabytes does not let garbage grow by as
// much before a collection. The kernel backs it with memory only once it is written.
func allocPage() ([]byte, error) {
	mem, err := syscall.Mmap(-1, 0, PageSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("map slab page: %w", err)
	}
	return mem, nil
}

func freePage(mem []byte) { _ = syscall.Munmap(mem) }
