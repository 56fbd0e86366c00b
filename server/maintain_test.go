package server

import (
	"context"
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
