package cache

import (
	"bytes"
	"testing"
	"time"
)

// model is a plain reference store: no shards, no LRU, no limit, flushes applied eagerly. The
// fuzz test drives it and a Store with the same operations and compares what clients see.
type model struct {
	items map[string]modelItem
	// pending is a delayed flush's deadline (unix nanos, 0 none); floor is the latest deadline
	// that has passed: anything stored at or before it is dead.
	pending, floor int64
}

type modelItem struct {
	value   []byte
	exptime int64
	cas     uint64
}

func (m *model) live(key string, now time.Time) (modelItem, bool) {
	it, ok := m.items[key]
	if !ok {
		return it, false
	}
	if it.exptime != 0 && it.exptime <= now.Unix() {
		delete(m.items, key)
		return it, false
	}
	return it, true
}

// tick applies a delayed flush whose deadline the clock has reached.
func (m *model) tick(now time.Time, stored map[string]int64) {
	if m.pending != 0 && m.pending <= now.UnixNano() {
		for k := range m.items {
			if stored[k] <= m.pending {
				delete(m.items, k)
			}
		}
		m.floor = max(m.floor, m.pending)
		m.pending = 0
	}
}

var fuzzKeys = []string{"a", "b", "c", "d"}

var fuzzSteps = []time.Duration{0, time.Nanosecond, 400 * time.Millisecond, time.Second, 3 * time.Second, 10 * time.Second}

// FuzzModel runs a random program of operations against a Store and the model and fails on the
// first difference in a Get, a CAS out of order, a missing hook call or broken bookkeeping.
func FuzzModel(f *testing.F) {
	f.Add([]byte{0, 0, 4, 0, 1, 0, 4, 0, 6, 3, 4, 0})
	f.Add([]byte{0, 0, 2, 5, 2, 0, 6, 4, 4, 0, 6, 5, 4, 0})
	f.Add([]byte{0, 1, 1, 0, 2, 1, 5, 1, 6, 4, 0, 2, 0, 6, 5, 4, 1, 4, 2})
	f.Add([]byte{0, 0, 3, 3, 1, 3, 4, 0, 6, 4, 4, 0, 7, 2, 6, 5, 4, 0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 600 {
			prog = prog[:600]
		}
		clk := newClock()
		h := newRecHook(t)
		s := New(Config{Shards: 2, MemoryLimit: 1 << 20, Now: clk.Now, Hook: h})
		// At once: thousands of inputs would otherwise keep their stores' pages until a GC.
		defer s.Close()
		h.s = s
		m := &model{items: make(map[string]modelItem)}
		stored := make(map[string]int64) // unix nanos of each key's last successful store
		var lastCAS uint64

		next := func() int {
			if len(prog) == 0 {
				return 0
			}
			b := prog[0]
			prog = prog[1:]
			return int(b)
		}
		exptimes := func(sel int) int64 {
			now := clk.Now().Unix()
			return []int64{0, -1, 1, 2, 5, maxDelta, maxDelta + 1, now + 3}[sel%8]
		}
		// changedDuring runs op and reports whether the hook saw key meanwhile.
		changedDuring := func(key string, op func()) bool {
			h.take()
			op()
			changed, _, _ := h.take()
			return changed[key] > 0
		}

		for step := 0; len(prog) > 0; step++ {
			opcode, arg := next(), next()
			key := fuzzKeys[arg%len(fuzzKeys)]
			now := clk.Now()
			m.tick(now, stored)
			switch opcode % 8 {
			case 0, 1: // set
				exp := s.Exptime(exptimes(next()))
				val := bytes.Repeat([]byte{byte('a' + step%26)}, next()%40)
				var cas uint64
				if !changedDuring(key, func() {
					var err error
					cas, err = s.Do(key, func(*Item) (*Item, Op) { return &Item{Value: val, Exptime: exp}, Replace })
					if err != nil {
						t.Fatalf("step %d: set %s: %v", step, key, err)
					}
				}) {
					t.Fatalf("step %d: set %s: hook not called", step, key)
				}
				if cas <= lastCAS {
					t.Fatalf("step %d: CAS %d after %d", step, cas, lastCAS)
				}
				lastCAS = cas
				stored[key] = now.UnixNano()
				if now.UnixNano() <= m.floor {
					delete(m.items, key) // stored at a passed flush deadline: dead at once
				} else {
					m.items[key] = modelItem{value: val, exptime: exp, cas: cas}
				}
			case 2: // append
				mi, live := m.live(key, now)
				suffix := []byte{byte('A' + step%26)}
				var cas uint64
				hooked := changedDuring(key, func() {
					var err error
					cas, err = s.Do(key, func(cur *Item) (*Item, Op) {
						if (cur != nil) != live {
							t.Fatalf("step %d: append %s: store live %v, model live %v", step, key, cur != nil, live)
						}
						if cur == nil {
							return nil, Keep
						}
						v := append(append([]byte(nil), cur.Value...), suffix...)
						return &Item{Value: v, Exptime: cur.Exptime}, Replace
					})
					if err != nil {
						t.Fatalf("step %d: append %s: %v", step, key, err)
					}
				})
				if live {
					if !hooked || cas <= lastCAS {
						t.Fatalf("step %d: append %s: hooked %v, CAS %d after %d", step, key, hooked, cas, lastCAS)
					}
					lastCAS = cas
					stored[key] = now.UnixNano()
					m.items[key] = modelItem{value: append(append([]byte(nil), mi.value...), suffix...), exptime: mi.exptime, cas: cas}
				}
			case 3: // delete
				_, live := m.live(key, now)
				if hooked := changedDuring(key, func() {
					s.Do(key, func(*Item) (*Item, Op) { return nil, Delete })
				}); live && !hooked {
					t.Fatalf("step %d: delete %s: hook not called", step, key)
				}
				delete(m.items, key)
			case 4: // get
				mi, live := m.live(key, now)
				it, ok := s.Get(key)
				if ok != live {
					t.Fatalf("step %d: get %s: store hit %v, model hit %v", step, key, ok, live)
				}
				if ok && (!bytes.Equal(it.Value, mi.value) || it.CAS != mi.cas || it.Exptime != mi.exptime) {
					t.Fatalf("step %d: get %s: store %q cas %d exp %d, model %q cas %d exp %d",
						step, key, it.Value, it.CAS, it.Exptime, mi.value, mi.cas, mi.exptime)
				}
			case 5: // flush_all, now or delayed
				delay := []time.Duration{0, 0, time.Second, 3 * time.Second}[next()%4]
				s.FlushAll(delay)
				if delay == 0 {
					clear(m.items)
					m.pending = 0
				} else {
					m.pending = now.Add(delay).UnixNano()
				}
			case 6: // time passes
				clk.Advance(fuzzSteps[arg%len(fuzzSteps)])
			case 7: // touch, then sometimes a sweep
				mi, live := m.live(key, now)
				exp := s.Exptime(exptimes(next()))
				if hooked := changedDuring(key, func() {
					s.Do(key, func(cur *Item) (*Item, Op) {
						if cur == nil {
							return nil, Keep
						}
						cur.Exptime = exp
						return nil, Modify
					})
				}); live && !hooked {
					t.Fatalf("step %d: touch %s: hook not called", step, key)
				}
				if live {
					mi.exptime = exp
					m.items[key] = mi
				}
				if arg%2 == 0 {
					s.Sweep(8)
				}
			}
		}
		h.checkLocked(t)
		checkInvariants(t, s)
	})
}
