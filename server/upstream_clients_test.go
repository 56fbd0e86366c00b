package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// gomemcache against the server in upstream mode: every call, and each write visible at the
// upstream that owns the key.
func TestUpstreamGomemcache(t *testing.T) {
	u := startUpstreamSetup(t, Config{})
	mc := memcache.New(u.s.tcpAddr)
	mc.Timeout = 3 * time.Second
	direct := map[string]*memcache.Client{}
	for _, a := range u.addrs {
		direct[a] = memcache.New(a)
	}
	at := func(key string) *memcache.Client { return direct[u.owner(key)] }

	keys := make([]string, 30)
	for i := range keys {
		keys[i] = fmt.Sprintf("gm:%d", i)
		if err := mc.Set(&memcache.Item{Key: keys[i], Value: []byte(keys[i]), Flags: uint32(i)}); err != nil {
			t.Fatalf("Set: %v", err)
		}
		it, err := at(keys[i]).Get(keys[i])
		if err != nil || string(it.Value) != keys[i] || it.Flags != uint32(i) {
			t.Fatalf("upstream Get %s = %+v, %v", keys[i], it, err)
		}
	}
	m, err := mc.GetMulti(append(keys, "missing"))
	if err != nil || len(m) != len(keys) {
		t.Fatalf("GetMulti: %d items, %v", len(m), err)
	}
	for i, k := range keys {
		if string(m[k].Value) != k || m[k].Flags != uint32(i) {
			t.Fatalf("GetMulti[%s] = %+v", k, m[k])
		}
	}
	if _, err := mc.Get("missing"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get missing: %v", err)
	}
	if err := mc.Add(&memcache.Item{Key: keys[0], Value: []byte("x")}); !errors.Is(err, memcache.ErrNotStored) {
		t.Fatalf("Add existing: %v", err)
	}
	if err := mc.Replace(&memcache.Item{Key: "missing", Value: []byte("x")}); !errors.Is(err, memcache.ErrNotStored) {
		t.Fatalf("Replace missing: %v", err)
	}
	// CompareAndSwap with the CAS a Get through us returned (the upstream's).
	it, err := mc.Get(keys[1])
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	it.Value = []byte("swapped")
	if err := mc.CompareAndSwap(it); err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	if err := mc.CompareAndSwap(it); !errors.Is(err, memcache.ErrCASConflict) {
		t.Fatalf("second CompareAndSwap: %v, want ErrCASConflict", err)
	}
	if got, err := at(keys[1]).Get(keys[1]); err != nil || string(got.Value) != "swapped" {
		t.Fatalf("upstream after CompareAndSwap: %+v, %v", got, err)
	}
	if err := mc.Set(&memcache.Item{Key: "n", Value: []byte("40")}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if v, err := mc.Increment("n", 2); err != nil || v != 42 {
		t.Fatalf("Increment = %d, %v", v, err)
	}
	if v, err := mc.Decrement("n", 50); err != nil || v != 0 {
		t.Fatalf("Decrement = %d, %v", v, err)
	}
	if _, err := mc.Increment("missing", 1); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Increment missing: %v", err)
	}
	if err := mc.Touch(keys[2], 100); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if err := mc.Delete(keys[3]); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := at(keys[3]).Get(keys[3]); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("upstream after Delete: %v", err)
	}
	if _, err := mc.Get(keys[3]); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if err := mc.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := mc.DeleteAll(); err != nil {
		t.Fatalf("DeleteAll: %v", err)
	}
	if m, err := mc.GetMulti(keys); err != nil || len(m) != 0 {
		t.Fatalf("GetMulti after DeleteAll: %d items, %v", len(m), err)
	}
}

// libmemcached's ASCII protocol suite against the server in upstream mode.
func TestUpstreamMemcapable(t *testing.T) {
	bin := testenv.LookPath(t, "memccapable")
	u := startUpstreamSetup(t, Config{})
	host, port, _ := net.SplitHostPort(u.s.tcpAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-a", "-t", "5").CombinedOutput()
	if err != nil {
		t.Fatalf("memccapable failed: %v\n%s", err, out)
	}
	passed := strings.Count(string(out), "[pass]")
	if strings.Contains(string(out), "[FAIL]") || passed < 20 {
		t.Fatalf("memccapable: %d passed\n%s", passed, out)
	}
}
