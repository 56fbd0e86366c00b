package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/cache"
)

// TestMaintainReclaimsExpiredItems: items that expire and are never asked for again leave the
// store's counts once Maintain runs, and stop when its context ends.
func TestMaintainReclaimsExpiredItems(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	st := s.Store()
	past := st.Now().Unix() - 1
	for _, k := range []string{"a", "b", "c"} {
		if _, err := st.Do(k, func(*cache.Item) (*cache.Item, cache.Op) {
			return &cache.Item{Value: []byte("v"), Exptime: past}, cache.Replace
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Do("live", func(*cache.Item) (*cache.Item, cache.Op) {
		return &cache.Item{Value: []byte("v")}, cache.Replace
	}); err != nil {
		t.Fatal(err)
	}
	if got := st.Stats().CurrItems; got != 4 {
		t.Fatalf("before maintenance: %d items, want 4 (expiry is lazy)", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Maintain(ctx, 5*time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for st.Stats().CurrItems != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if got := st.Stats().CurrItems; got != 1 {
		t.Fatalf("after maintenance: %d items, want only the live one", got)
	}
	if _, ok := st.Get("live"); !ok {
		t.Fatal("maintenance removed a live item")
	}
}

// fetchingKernel is a fakeKernel that also reports the keys it served (KernelFetches).
type fetchingKernel struct {
	*fakeKernel
	served []string
}

func (k *fetchingKernel) TakeFetched(fn func(key string)) {
	k.mu.Lock()
	served := k.served
	k.served = nil
	k.mu.Unlock()
	for _, key := range served {
		fn(key)
	}
}

// TestMaintainRecordsKernelFetches: an item only the kernel answers is bumped in the store's LRU
// by the maintenance pass, so eviction takes the items nobody asked for instead.
func TestMaintainRecordsKernelFetches(t *testing.T) {
	k := &fetchingKernel{fakeKernel: newFakeKernel()}
	s, err := New(Config{Kernel: k, MemoryLimit: 1 << 20}) // one shard: the limit holds one max-size item
	if err != nil {
		t.Fatal(err)
	}
	st := s.Store()
	val := make([]byte, 100<<10)
	put := func(key string) {
		t.Helper()
		if _, err := st.Do(key, func(*cache.Item) (*cache.Item, cache.Op) {
			return &cache.Item{Value: val}, cache.Replace
		}); err != nil {
			t.Fatal(err)
		}
	}
	put("hot")
	for i := range 5 {
		put(fmt.Sprintf("cold%d", i))
	}
	k.served = []string{"hot"}
	s.maintainOnce()
	if k.served != nil {
		t.Fatal("maintenance did not take the kernel's fetches")
	}
	for i := range 10 { // twice what fits: without the bump, "hot" (the oldest) goes first
		put(fmt.Sprintf("new%d", i))
		if i == 2 {
			k.served = []string{"hot"}
			s.maintainOnce()
		}
	}
	if st.Stats().Evictions == 0 {
		t.Fatal("the store never filled; the test proves nothing")
	}
	it, ok := st.Get("hot")
	if !ok {
		t.Fatal("the item the kernel kept serving was evicted")
	}
	if !it.Fetched {
		t.Fatal("the kernel's fetch did not mark the item fetched")
	}
	if _, ok := st.Get("cold0"); ok {
		t.Fatal("cold0, never fetched, outlived the eviction of newer items")
	}
}
