package cache

import (
	"fmt"
	"syscall"
)

// mapAnon maps n bytes of anonymous memory outside the Go heap: the collector never scans it and
// it does not count towards the heap goal, so a store of many gigabytes does not let garbage grow
// by as much before a collection. The kernel backs it with memory only once it is written.
func mapAnon(n int) ([]byte, error) {
	mem, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes: %w", n, err)
	}
	return mem, nil
}

func unmap(mem []byte) { _ = syscall.Munmap(mem) }
