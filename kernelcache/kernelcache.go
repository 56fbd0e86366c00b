// Package kernelcache is the contract between the memcached server and the in-kernel copy of hot
// items: the item the kernel serves, the kernel path's counters, and the hooks through which the
// server keeps that copy consistent with every write. The server depends on these interfaces and
// the bpf package implements them, so neither imports the other.
//
// It imports nothing of the project's.
package kernelcache

import "time"

// Item is what the kernel cache needs to serve one item: the same fields the server encodes
// with protocol.AppendValue, plus the absolute expiry.
type Item struct {
	Key   string
	Flags uint32
	Value []byte
	CAS   uint64
	// Expires is when the item stops being servable; the zero Time means never.
	Expires time.Time
	// MetaState is set when the item carries meta-protocol state that mg replies show (a stale
	// mark, an issued recache token): the kernel then leaves mg of it to the server.
	MetaState bool
}

// Stats are the kernel path's own counters, summed over CPUs.
type Stats struct {
	// Requests is the number of GET requests the kernel answered (a multi-key get counts once).
	Requests uint64
	// Hits is the number of keys the kernel served (a multi-key get of n keys counts n), so that
	// get_hits and cmd_get can include them the way memcached counts keys.
	Hits uint64
	// BytesSent is the UDP payload bytes of kernel replies.
	BytesSent uint64
	// Fills counts entries installed (new keys and new versions), FillsSkipped admitted ones
	// with no free memory, Evictions live entries dropped to make room for others,
	// AdmissionsRefused new keys the admission policy kept out.
	Fills, FillsSkipped, Evictions, AdmissionsRefused uint64
}

// Cache is the in-kernel copy of hot items that the kernel programs serve.
//
// Consistency (docs/DESIGN.md, invariants 1 and 2) rests on one rule: the caller invokes every
// method while holding the store lock of the key involved, the same lock every write to that key
// takes. A fill therefore never races a write of the same key, and a write's Invalidate has
// returned, with the kernel no longer able to serve the old value, before the write is
// acknowledged.
//
// Implementations must be safe for concurrent use by goroutines holding locks of different keys.
type Cache interface {
	// Invalidate stops the kernel serving key. It must not return until no later packet can be
	// answered with the old value. It is called for every mutation, expiry and eviction of key.
	Invalidate(key string) error
	// Offer is called when userspace answered a UDP GET hit for it. The kernel cache applies its
	// admission policy and may copy it in; items it cannot serve (too large, bad key) are ignored.
	Offer(it Item) error
	// Flush makes every entry installed before deadline unservable from deadline on, in O(1).
	// A deadline not after now takes effect at once.
	Flush(deadline time.Time) error
	// Stats reads the kernel counters.
	Stats() (Stats, error)
}

// Fetches is implemented by kernel caches that can say which items they served. The server
// records those fetches in its store (LRU position, fetched flag, last access), so that an item
// only the kernel answers does not look cold to the store's eviction: otherwise the hottest keys
// would be evicted first, and their kernel copies with them.
type Fetches interface {
	// TakeFetched calls fn with the key of each item served since the last call, at most once
	// per item per call.
	TakeFetched(fn func(key string))
}
