package server

import (
	"context"
	"time"
)

// SweepBatch is how many items one maintenance pass examines: enough to keep up with a store of a
// few million items at one pass a second, small enough that no shard lock is held for long.
const SweepBatch = 4096

// Maintain runs the background passes until ctx is done, one every interval:
//   - it removes expired and flushed items, as memcached's LRU crawler does. Expiry is otherwise
//     lazy: without this, items nobody asks for keep their memory (and their kernel copies'
//     budget) until eviction reaches them. Each removal goes through the store's hook, so the
//     kernel copy is dropped too;
//   - when the kernel cache implements KernelFetches, it records the fetches the kernel answered
//     in the store, so the store's LRU sees the kernel's hits.
func (s *Server) Maintain(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.maintainOnce()
		}
	}
}

// maintainOnce is one pass of Maintain.
func (s *Server) maintainOnce() {
	s.store.Sweep(SweepBatch)
	if kf, ok := s.kernel.(KernelFetches); ok {
		kf.TakeFetched(s.store.RecordFetch)
	}
}
