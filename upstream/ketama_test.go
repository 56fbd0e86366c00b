package upstream

import (
	"bufio"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

func testKeys(n int) [][]byte {
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "key:%d", i)
	}
	return keys
}

func addrs(n int) []string {
	a := make([]string, n)
	for i := range a {
		a[i] = fmt.Sprintf("10.0.0.%d:11211", i+1)
	}
	return a
}

// The ring does not depend on the order servers are listed in, and every server has its points.
func TestRingOrderIndependent(t *testing.T) {
	a := addrs(5)
	r1 := NewRing(a)
	rev := []string{a[4], a[3], a[2], a[1], a[0]}
	r2 := NewRing(rev)
	if len(r1.points) != 5*PointsPerServer {
		t.Fatalf("%d points, want %d", len(r1.points), 5*PointsPerServer)
	}
	for _, k := range testKeys(20000) {
		if x, y := r1.Addr(r1.Pick(k)), r2.Addr(r2.Pick(k)); x != y {
			t.Fatalf("key %s: %s in one order, %s in the other", k, x, y)
		}
	}
}

// Adding a fifth server moves about 1/5 of the keys, every moved key to the new server; removing
// a server moves only its keys.
func TestRingAddRemoveMovesOneNth(t *testing.T) {
	keys := testKeys(50000)
	four, five := NewRing(addrs(4)), NewRing(addrs(5))
	moved := 0
	for _, k := range keys {
		a, b := four.Addr(four.Pick(k)), five.Addr(five.Pick(k))
		if a != b {
			moved++
			if b != addrs(5)[4] {
				t.Fatalf("key %s moved from %s to %s, not to the new server", k, a, b)
			}
		}
	}
	if share := float64(moved) / float64(len(keys)); share < 0.12 || share > 0.28 {
		t.Fatalf("adding a 5th server moved %.3f of the keys, want about 0.2", share)
	}
	// Remove server 2 of 5: only its keys move.
	rest := append(append([]string{}, addrs(5)[:2]...), addrs(5)[3:]...)
	without := NewRing(rest)
	for _, k := range keys {
		a, b := five.Addr(five.Pick(k)), without.Addr(without.Pick(k))
		if a != b && a != addrs(5)[2] {
			t.Fatalf("removing %s moved key %s from %s to %s", addrs(5)[2], k, a, b)
		}
	}
}

// With 160 points each, no server of four gets far from a quarter of the keys.
func TestRingBalance(t *testing.T) {
	r := NewRing(addrs(4))
	counts := make([]int, 4)
	keys := testKeys(100000)
	for _, k := range keys {
		counts[r.Pick(k)]++
	}
	for i, c := range counts {
		share := float64(c) / float64(len(keys))
		if math.Abs(share-0.25) > 0.07 {
			t.Errorf("server %d has %.3f of the keys, want 0.25 +- 0.07 (%v)", i, share, counts)
		}
	}
}

// Hand-checked ketama arithmetic: the key hash is MD5's first four bytes little-endian, and a key
// hashing exactly onto a point belongs to that point's server, one past it to the next point's.
func TestRingPickBoundaries(t *testing.T) {
	// MD5("") = d41d8cd98f00b204e9800998ecf8427e.
	if got := HashKey(nil); got != 0xd98c1dd4 {
		t.Fatalf("HashKey(\"\") = %#x, want 0xd98c1dd4", got)
	}
	r := NewRing(addrs(3))
	for i := 0; i+1 < len(r.points); i += 37 {
		p, q := r.points[i], r.points[i+1]
		if p.hash == q.hash {
			continue
		}
		if got := r.owner(p.hash); got != p.server {
			t.Fatalf("hash on point %d: server %d, want %d", i, got, p.server)
		}
		if got := r.owner(p.hash + 1); got != q.server {
			t.Fatalf("hash after point %d: server %d, want %d", i, got, q.server)
		}
	}
	last := r.points[len(r.points)-1]
	if last.hash != math.MaxUint32 {
		if got := r.owner(last.hash + 1); got != r.points[0].server {
			t.Fatalf("past the last point: server %d, want the first point's %d", got, r.points[0].server)
		}
	}
	// Against a linear scan of the ring.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		h := rng.Uint32()
		want := r.points[0].server
		for _, p := range r.points {
			if p.hash >= h {
				want = p.server
				break
			}
		}
		if got := r.owner(h); got != want {
			t.Fatalf("owner(%#x) = %d, linear scan says %d", h, got, want)
		}
	}
	if NewRing(nil).Pick([]byte("k")) != -1 {
		t.Fatal("empty ring picked a server")
	}
}

// Placements of 2000 keys over five servers, as libmemcached 1.1.4 computes them with
// MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED (testdata/ketama_libmemcached.c generated the files): on
// ports other than 11211, and all on 11211, where libmemcached leaves the port out of the names.
func TestRingMatchesLibmemcached(t *testing.T) {
	for _, file := range []string{"testdata/ketama_libmemcached.txt", "testdata/ketama_libmemcached_11211.txt"} {
		f, err := os.Open(file)
		if err != nil {
			t.Fatalf("open reference: %v", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		if !sc.Scan() {
			t.Fatalf("%s: empty", file)
		}
		servers := strings.Fields(sc.Text())[1:]
		r := NewRing(servers)
		n, mismatches := 0, 0
		for sc.Scan() {
			var key string
			var want int
			if _, err := fmt.Sscanf(sc.Text(), "%s %d", &key, &want); err != nil {
				t.Fatalf("%s: parse %q: %v", file, sc.Text(), err)
			}
			n++
			if got := r.Pick([]byte(key)); got != want {
				mismatches++
				if mismatches <= 5 {
					t.Errorf("%s: %s on %s, libmemcached says %s", file, key, servers[got], servers[want])
				}
			}
		}
		if n != 2000 || mismatches > 0 {
			t.Fatalf("%s: %d keys, %d placed differently from libmemcached", file, n, mismatches)
		}
	}
}
