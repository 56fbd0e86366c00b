package server

import "github.com/xdpcache/xdpcache/kernelcache"

// The server's names for the kernel contract, which package kernelcache states (its Cache
// documents the consistency rule the server keeps: every call under the store lock of the key).
// The server owns no kernel code: the bpf package implements kernelcache.Cache, and neither
// package imports the other.
type (
	// KernelItem is kernelcache.Item.
	KernelItem = kernelcache.Item
	// KernelStats is kernelcache.Stats.
	KernelStats = kernelcache.Stats
	// KernelCache is kernelcache.Cache.
	KernelCache = kernelcache.Cache
	// KernelFetches is kernelcache.Fetches.
	KernelFetches = kernelcache.Fetches
)
