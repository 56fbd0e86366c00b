package cache

import (
	"errors"
	"testing"
	"time"
)

// Install keeps the caller's CAS (a fronted memcached's unique), runs the hook like Replace, and
// flush_all drops installed items whatever their CAS, below or above the store's own counter.
func TestInstallKeepsCASAndFlushIgnoresIt(t *testing.T) {
	s, clk, h := newTestStore(t, Config{Shards: 2})
	set(t, s, "own", "v", 0) // the store's counter is now small
	h.take()
	install := func(key string, cas uint64) {
		t.Helper()
		got, err := s.Do(key, func(*Item) (*Item, Op) {
			return &Item{Value: []byte("up"), Flags: 9, CAS: cas}, Install
		})
		if err != nil || got != cas {
			t.Fatalf("Install %s: cas %d err %v, want %d", key, got, err, cas)
		}
	}
	install("big", 1<<40)
	install("small", 1)
	h.expectChanged(t, "big", "small")
	it, ok := s.Get("big")
	if !ok || it.CAS != 1<<40 || it.Flags != 9 || string(it.Value) != "up" || it.LastAccess != clk.Now().Unix() {
		t.Fatalf("installed item %+v, %v", it, ok)
	}
	// A Replace after an Install still gets a fresh unique of the store's own.
	own := set(t, s, "own2", "v", 0)
	if own >= 1<<40 || own <= 1 {
		t.Fatalf("Replace CAS %d after Install", own)
	}
	s.FlushAll(0)
	mustMiss(t, s, "big")
	mustMiss(t, s, "small")
	mustMiss(t, s, "own2")
	// Installed after the flush, even with a CAS below the flush point: live.
	install("small", 1)
	mustGet(t, s, "small", "up")

	// Delayed flush: an item installed before the deadline goes at the deadline.
	s.FlushAll(10 * time.Second)
	install("later", 5)
	clk.Advance(11 * time.Second)
	mustMiss(t, s, "later")

	if _, err := s.Do("x", func(*Item) (*Item, Op) { return nil, Install }); !errors.Is(err, ErrInvalidOp) {
		t.Fatalf("Install with nil item: %v, want ErrInvalidOp", err)
	}
	// Size limits apply as for Replace.
	if _, err := s.Do("huge", func(*Item) (*Item, Op) {
		return &Item{Value: make([]byte, DefaultMaxItemSize), CAS: 7}, Install
	}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized Install: %v, want ErrTooLarge", err)
	}
}
