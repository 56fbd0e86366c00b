package server

import (
	"testing"
)

// The operations layer on its own: each store mode against a missing key, a present key and a
// CAS, which both front ends rely on.
func TestOpsStoreModes(t *testing.T) {
	type step struct {
		req  storeReq
		want storeStatus
		// value is the key's value after the step ("" and absent: none).
		value  string
		absent bool
	}
	v := func(s string) []byte { return []byte(s) }
	cases := []struct {
		name  string
		steps []step
	}{
		{"add then add", []step{
			{storeReq{mode: modeAdd, value: v("a")}, storeStored, "a", false},
			{storeReq{mode: modeAdd, value: v("b")}, storeNotStored, "a", false},
		}},
		{"replace needs an item", []step{
			{storeReq{mode: modeReplace, value: v("a")}, storeNotStored, "", true},
			{storeReq{mode: modeSet, value: v("a")}, storeStored, "a", false},
			{storeReq{mode: modeReplace, value: v("b")}, storeStored, "b", false},
		}},
		{"append and prepend join", []step{
			{storeReq{mode: modeAppend, value: v("x")}, storeNotStored, "", true},
			{storeReq{mode: modeSet, value: v("mid")}, storeStored, "mid", false},
			{storeReq{mode: modeAppend, value: v(">")}, storeStored, "mid>", false},
			{storeReq{mode: modePrepend, value: v("<")}, storeStored, "<mid>", false},
		}},
		{"append vivifies", []step{
			{storeReq{mode: modeAppend, value: v("x"), vivify: true}, storeStored, "x", false},
		}},
		{"cas on a missing key", []step{
			{storeReq{mode: modeSet, value: v("a"), hasCAS: true, cas: 1}, storeNotFound, "", true},
		}},
		{"add ignores a cas", []step{
			{storeReq{mode: modeAdd, value: v("a"), hasCAS: true, cas: 99}, storeStored, "a", false},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Config{})
			if err != nil {
				t.Fatal(err)
			}
			key := []byte("k")
			for i, st := range tc.steps {
				res := s.storeItem(key, &st.req)
				if res.status != st.want {
					t.Fatalf("step %d: status %d, want %d", i, res.status, st.want)
				}
				if (res.cas != 0) != (st.want == storeStored) {
					t.Fatalf("step %d: cas %d with status %d", i, res.cas, res.status)
				}
				it, ok := s.peek(key)
				if ok == st.absent || string(it.Value) != st.value {
					t.Fatalf("step %d: item %q (present %v), want %q (present %v)", i, it.Value, ok, st.value, !st.absent)
				}
			}
		})
	}
}

func TestOpsCASAndStale(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("k")
	first := s.storeItem(key, &storeReq{mode: modeSet, value: []byte("1")})
	second := s.storeItem(key, &storeReq{mode: modeSet, value: []byte("2"), hasCAS: true, cas: first.cas})
	if second.status != storeStored {
		t.Fatalf("cas with the current unique: %d", second.status)
	}
	if res := s.storeItem(key, &storeReq{mode: modeReplace, value: []byte("3"), hasCAS: true, cas: first.cas}); res.status != storeExists {
		t.Fatalf("replace with an old unique: %d, want exists", res.status)
	}
	// An older unique with stale stores, marked stale.
	res := s.storeItem(key, &storeReq{mode: modeSet, value: []byte("4"), hasCAS: true, cas: first.cas, stale: true})
	if res.status != storeStored {
		t.Fatalf("stale store: %d", res.status)
	}
	it, _ := s.peek(key)
	if string(it.Value) != "4" || !it.Stale {
		t.Fatalf("after a stale store: %q stale=%v", it.Value, it.Stale)
	}
	// A stale item hands out one win token.
	var f fetchResult
	s.fetch(key, &fetchReq{tokens: true}, &f)
	if !f.hit || !f.won || !f.item.Stale {
		t.Fatalf("first fetch of a stale item: %+v", f)
	}
	s.fetch(key, &fetchReq{tokens: true}, &f)
	if f.won || !f.item.WinIssued {
		t.Fatalf("second fetch of a stale item won again: %+v", f)
	}
}

func TestOpsArith(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("n")
	if res := s.arith(key, &arithReq{incr: true, delta: 1}, nil); res.status != arithNotFound {
		t.Fatalf("incr of a missing key: %d", res.status)
	}
	res := s.arith(key, &arithReq{incr: true, delta: 1, vivify: true, initial: 10}, nil)
	if res.status != arithOK || !res.created || string(res.digits) != "10" {
		t.Fatalf("vivify: %+v", res)
	}
	s.storeItem(key, &storeReq{mode: modeSet, value: []byte("100")})
	res = s.arith(key, &arithReq{delta: 1}, nil)
	if res.status != arithOK || string(res.digits) != "99" {
		t.Fatalf("decr: %+v", res)
	}
	// memcached rewrites in place: a shorter number is padded to the old length.
	if it, _ := s.peek(key); string(it.Value) != "99 " {
		t.Fatalf("stored %q, want %q", it.Value, "99 ")
	}
	if res := s.arith(key, &arithReq{delta: 1000}, nil); string(res.digits) != "0" {
		t.Fatalf("decr below zero: %q", res.digits)
	}
	if res := s.arith(key, &arithReq{incr: true, delta: 1, hasCAS: true, cas: 1}, nil); res.status != arithExists {
		t.Fatalf("incr with a wrong cas: %d", res.status)
	}
	s.storeItem(key, &storeReq{mode: modeSet, value: []byte("x")})
	if res := s.arith(key, &arithReq{incr: true, delta: 1}, nil); res.status != arithNonNumeric {
		t.Fatalf("incr of a non-number: %d", res.status)
	}
}

// Every operation that changes an item drops the kernel copy before it returns, so before any
// front end formats a reply (invariant 1); a plain or touching read does not offer, a UDP read
// does.
func TestOpsKernelHooks(t *testing.T) {
	k := newFakeKernel()
	s, err := New(Config{Kernel: k})
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("k")
	var f fetchResult
	changes := []struct {
		name string
		op   func()
	}{
		{"set", func() { s.storeItem(key, &storeReq{mode: modeSet, value: []byte("1")}) }},
		{"append", func() { s.storeItem(key, &storeReq{mode: modeAppend, value: []byte("2")}) }},
		{"incr", func() { s.arith(key, &arithReq{incr: true, delta: 1}, nil) }},
		{"touch", func() { s.touchItem(key, 0) }},
		{"gat", func() { s.fetch(key, &fetchReq{touch: true}, &f) }},
		{"md I", func() { s.deleteItem(key, &deleteReq{stale: true}) }},
		{"delete", func() { s.deleteItem(key, &deleteReq{}) }},
	}
	for _, c := range changes {
		s.storeItem(key, &storeReq{mode: modeSet, value: []byte("7")})
		s.fetch(key, &fetchReq{offer: true}, &f)
		if _, ok := k.get("k"); !ok {
			t.Fatalf("%s: the UDP read did not fill the kernel", c.name)
		}
		c.op()
		if it, ok := k.get("k"); ok {
			t.Fatalf("%s returned with the kernel still holding %q", c.name, it.Value)
		}
	}
	offers := k.offerCount()
	s.storeItem(key, &storeReq{mode: modeSet, value: []byte("v")})
	s.fetch(key, &fetchReq{}, &f)
	s.fetch(key, &fetchReq{touch: true}, &f)
	if n := k.offerCount() - offers; n != 0 {
		t.Fatalf("a plain and a touching read offered %d times", n)
	}
	s.fetch(key, &fetchReq{offer: true}, &f)
	if got, ok := k.get("k"); k.offerCount() != offers+1 || !ok || string(got.Value) != "v" {
		t.Fatalf("a UDP read: %d offers, item %+v", k.offerCount()-offers, got)
	}
}
