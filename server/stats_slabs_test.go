package server

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// statValues parses a stats reply into name -> value.
func statValues(t *testing.T, who, reply string) map[string]string {
	t.Helper()
	names := statNames(t, who, reply)
	vals := make(map[string]string, len(names))
	for _, line := range strings.Split(strings.TrimSuffix(reply, "END\r\n"), "\r\n") {
		if m := statLine.FindStringSubmatch(line); m != nil {
			vals[m[1]] = m[2]
		}
	}
	return vals
}

// TestSlabStatsAgainstMemcached stores the same items in our server and in Debian's memcached
// (same -m, -f, -n) and compares "stats slabs", "stats items" and "stats sizes": every field we
// report is one memcached reports, and the classes, their chunk sizes, pages, chunks and item
// counts are the same numbers.
func TestSlabStatsAgainstMemcached(t *testing.T) {
	mc := testenv.StartMemcached(t, false, "-m", "64")
	ours := startServer(t, Config{MemoryLimit: 64 << 20})
	clients := map[string]*textClient{"xdpcache": dialText(t, ours.tcpAddr), "memcached": dialText(t, mc.Addr)}

	// One item in each of several classes, some fetched, one deleted; plus a class with many.
	sizes := []int{1, 100, 1000, 5000, 20000, 100000, 400000}
	for who, c := range clients {
		// memcached counts sizes from the moment they are enabled, and answers without END.
		if got := c.roundTrip("stats sizes_enable\r\n"); got != "STAT sizes_status enabled\r\n" {
			t.Errorf("%s: stats sizes_enable: %q", who, got)
		}
		for i, n := range sizes {
			c.roundTrip(fmt.Sprintf("set k%d 0 0 %d\r\n%s\r\n", i, n, strings.Repeat("x", n)))
		}
		for i := range 300 {
			c.roundTrip(fmt.Sprintf("set m%d 0 0 300\r\n%s\r\n", i, strings.Repeat("y", 300)))
		}
		c.roundTrip("get k1 k2 m1\r\n")
		c.roundTrip("delete m2\r\n")
		// The hits only the commands know to count, per class.
		c.roundTrip("set n1 0 0 2\r\n10\r\n")
		c.roundTrip("incr n1 5\r\n")
		c.roundTrip("incr n1 1\r\n")
		c.roundTrip("decr n1 2\r\n")
		c.roundTrip("incr nobody 1\r\n")
		c.roundTrip("touch k1 100\r\n")
		c.roundTrip("gat 100 m3\r\n")
		// A CAS unique no item has: cas_badval, and a set command in the class of the value.
		c.roundTrip(fmt.Sprintf("cas m4 0 0 300 1\r\n%s\r\n", strings.Repeat("z", 300)))
		f := strings.Fields(c.roundTrip("gets m5\r\n"))
		if len(f) < 5 {
			t.Fatalf("%s: gets m5: %q", who, f)
		}
		if got := c.roundTrip("cas m5 0 0 3 " + f[4] + "\r\nabc\r\n"); got != "STORED\r\n" {
			t.Fatalf("%s: cas with the item's unique: %q", who, got)
		}
	}

	for _, group := range []string{"slabs", "items"} {
		have := statValues(t, "xdpcache", clients["xdpcache"].roundTrip("stats "+group+"\r\n"))
		theirs := statValues(t, "memcached", clients["memcached"].roundTrip("stats "+group+"\r\n"))
		if len(have) == 0 {
			t.Fatalf("stats %s: ours is empty", group)
		}
		for name, v := range have {
			want, ok := theirs[name]
			switch {
			case !ok:
				t.Errorf("stats %s: our %s is not one of memcached's fields", group, name)
			case strings.HasSuffix(name, ":age") || strings.HasSuffix(name, ":mem_requested"):
				// Clock and per-item header bytes differ by design.
			case v != want:
				t.Errorf("stats %s: %s = %s, memcached %s", group, name, v, want)
			}
		}
		// The fields memcached-tool reads.
		for name := range theirs {
			for _, f := range []string{"chunk_size", "total_pages", "used_chunks", "total_chunks", "number", "evicted", "evicted_time", "outofmemory", "active_slabs", "total_malloced"} {
				if (strings.HasSuffix(name, ":"+f) || name == f) && have[name] == "" {
					t.Errorf("stats %s: we lack %s", group, name)
				}
			}
		}
	}

	// The per-class hits were counted, not only equal: the workload's sums.
	sums := map[string]int{}
	for name, v := range statValues(t, "xdpcache", clients["xdpcache"].roundTrip("stats slabs\r\n")) {
		if i := strings.IndexByte(name, ':'); i > 0 {
			n, _ := strconv.Atoi(v)
			sums[name[i+1:]] += n
		}
	}
	for name, want := range map[string]int{"incr_hits": 2, "decr_hits": 1, "touch_hits": 2, "cas_hits": 1, "cas_badval": 1} {
		if sums[name] != want {
			t.Errorf("stats slabs: %s sums to %d over the classes, want %d", name, sums[name], want)
		}
	}

	// stats sizes: the same buckets' shape (multiples of 32) and the same item count; the
	// bucket of an item depends on each server's header size.
	sizeLine := regexp.MustCompile(`^\d+$`)
	for who, c := range clients {
		vals := statValues(t, who, c.roundTrip("stats sizes\r\n"))
		total := 0
		for name, v := range vals {
			n, _ := strconv.Atoi(name)
			if !sizeLine.MatchString(name) || n%32 != 0 {
				t.Errorf("%s: stats sizes line %s %s", who, name, v)
			}
			k, _ := strconv.Atoi(v)
			total += k
		}
		if want := len(sizes) + 299 + 1; total != want { // the 300 "m" less one deleted, and n1
			t.Errorf("%s: stats sizes counts %d items, want %d", who, total, want)
		}
		if got := c.roundTrip("stats sizes_disable\r\nstats sizes\r\n"); got != "STAT sizes_status disabled\r\nSTAT sizes_status disabled\r\nEND\r\n" {
			t.Errorf("%s: after sizes_disable: %q", who, got)
		}
	}

	// The slab fields of the general stats are memcached's.
	have := statValues(t, "xdpcache", clients["xdpcache"].roundTrip("stats\r\n"))
	theirs := statValues(t, "memcached", clients["memcached"].roundTrip("stats\r\n"))
	for _, name := range []string{"slab_reassign_rescues", "slab_reassign_evictions_nomem", "slabs_moved", "slab_global_page_pool", "hash_bytes"} {
		if have[name] == "" || theirs[name] == "" {
			t.Errorf("stats %s: ours %q, memcached %q", name, have[name], theirs[name])
		}
	}
}

// TestChainedItemsAgainstMemcached stores two items larger than the largest chunk in our server
// and in memcached: both chain them the same way, in chunks of the largest class and a last one
// of the class that fits the rest, and list and count them in the largest class. Only the head
// chunk differs: ours holds a smaller header, so it sits in a smaller class.
func TestChainedItemsAgainstMemcached(t *testing.T) {
	mc := testenv.StartMemcached(t, false, "-m", "64")
	ours := startServer(t, Config{MemoryLimit: 64 << 20})
	used := map[string]map[int]int{}
	for who, addr := range map[string]string{"xdpcache": ours.tcpAddr, "memcached": mc.Addr} {
		c := dialText(t, addr)
		for i, n := range []int{700000, 1000000} {
			v := strings.Repeat(string(rune('a'+i)), n)
			if got := c.roundTrip(fmt.Sprintf("set big%d 0 0 %d\r\n%s\r\n", i, n, v)); got != "STORED\r\n" {
				t.Fatalf("%s: set of %d bytes: %q", who, n, got)
			}
			want := fmt.Sprintf("VALUE big%d 0 %d\r\n%s\r\nEND\r\n", i, n, v)
			if got := c.roundTrip(fmt.Sprintf("get big%d\r\n", i)); got != want {
				t.Fatalf("%s: get of the %d-byte item: %d bytes back, not the value", who, n, len(got))
			}
		}
		items := statValues(t, who, c.roundTrip("stats items\r\n"))
		slabs := statValues(t, who, c.roundTrip("stats slabs\r\n"))
		largest := 0
		used[who] = map[int]int{}
		for name, v := range slabs {
			cls, field, ok := strings.Cut(name, ":")
			n, err := strconv.Atoi(cls)
			if !ok || err != nil || field != "used_chunks" {
				continue
			}
			largest = max(largest, n)
			used[who][n], _ = strconv.Atoi(v)
		}
		if got := items[fmt.Sprintf("items:%d:number", largest)]; got != "2" {
			t.Errorf("%s: the largest class %d lists %q items, want 2", who, largest, got)
		}
	}
	heads := map[string]int{"xdpcache": 1, "memcached": 2} // 96- and 120-byte chunks
	for who, h := range heads {
		if used[who][h] != 2 {
			t.Errorf("%s: %d chunks used in class %d, want the 2 heads", who, used[who][h], h)
		}
		delete(used[who], h)
	}
	if !maps.Equal(used["xdpcache"], used["memcached"]) {
		t.Errorf("used chunks by class but the heads': ours %v, memcached %v", used["xdpcache"], used["memcached"])
	}
}

// memcachedTool is Debian's memcached-tool script (package memcached).
const memcachedTool = "/usr/share/memcached/scripts/memcached-tool"

// TestMemcachedToolDisplay runs memcached-tool's display and stats modes against our server:
// one row per class with pages, with the class's chunk size, pages and item count.
func TestMemcachedToolDisplay(t *testing.T) {
	if _, err := os.Stat(memcachedTool); err != nil {
		testenv.Unavailable(t, "memcached-tool not installed (package memcached): %v", err)
	}
	perl := testenv.LookPath(t, "perl")
	ours := startServer(t, Config{MemoryLimit: 64 << 20})
	c := dialText(t, ours.tcpAddr)
	for i := range 50 {
		c.roundTrip(fmt.Sprintf("set a%d 0 0 10\r\n0123456789\r\n", i))
	}
	c.roundTrip(fmt.Sprintf("set big 0 0 3000\r\n%s\r\n", strings.Repeat("z", 3000)))

	out, err := exec.Command(perl, memcachedTool, ours.tcpAddr, "display").CombinedOutput()
	if err != nil {
		t.Fatalf("memcached-tool display: %v\n%s", err, out)
	}
	t.Logf("memcached-tool display:\n%s", out)
	// "  #  Item_Size  Max_age   Pages   Count   Full?  Evicted Evict_Time OOM"
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^\s+1\s+96B\s+\d+s\s+1\s+50\s+no\s+0\s+0\s+0\s*$`),
		regexp.MustCompile(`(?m)^\s+17\s+3\.5K\s+\d+s\s+1\s+1\s+no\s+0\s+0\s+0\s*$`),
	} {
		if !want.Match(out) {
			t.Errorf("memcached-tool display lacks a row matching %s", want)
		}
	}
	out, err = exec.Command(perl, memcachedTool, ours.tcpAddr, "stats").CombinedOutput()
	if err != nil {
		t.Fatalf("memcached-tool stats: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^\s+curr_items\s+51\s*$`).Match(out) {
		t.Errorf("memcached-tool stats lacks curr_items 51:\n%s", out)
	}
}
