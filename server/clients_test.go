package server

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// TestMemcapable runs libmemcached's ASCII protocol test suite against the server.
func TestMemcapable(t *testing.T) {
	bin := testenv.LookPath(t, "memccapable")
	s := startServer(t, Config{})
	host, port, _ := net.SplitHostPort(s.tcpAddr)
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
	t.Logf("memccapable: %d ASCII tests passed", passed)
}

// TestGomemcache drives the server with a widely used Go client.
func TestGomemcache(t *testing.T) {
	s := startServer(t, Config{})
	mc := memcache.New(s.tcpAddr)
	mc.Timeout = 2 * time.Second

	if err := mc.Set(&memcache.Item{Key: "k1", Value: []byte("v1"), Flags: 7}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	it, err := mc.Get("k1")
	if err != nil || string(it.Value) != "v1" || it.Flags != 7 {
		t.Fatalf("Get = %+v, %v", it, err)
	}
	if _, err := mc.Get("missing"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get missing: %v, want ErrCacheMiss", err)
	}
	if err := mc.Add(&memcache.Item{Key: "k1", Value: []byte("x")}); !errors.Is(err, memcache.ErrNotStored) {
		t.Fatalf("Add existing: %v, want ErrNotStored", err)
	}
	if err := mc.Add(&memcache.Item{Key: "k2", Value: []byte("v2")}); err != nil {
		t.Fatalf("Add: %v", err)
	}
	m, err := mc.GetMulti([]string{"k1", "k2", "missing"})
	if err != nil || len(m) != 2 || string(m["k1"].Value) != "v1" || string(m["k2"].Value) != "v2" {
		t.Fatalf("GetMulti = %v, %v", m, err)
	}

	// CompareAndSwap with the CAS from Get succeeds once; the second use is stale.
	it, err = mc.Get("k1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	it.Value = []byte("v1b")
	if err := mc.CompareAndSwap(it); err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	it.Value = []byte("v1c")
	if err := mc.CompareAndSwap(it); !errors.Is(err, memcache.ErrCASConflict) {
		t.Fatalf("stale CompareAndSwap: %v, want ErrCASConflict", err)
	}
	if it, err := mc.Get("k1"); err != nil || string(it.Value) != "v1b" {
		t.Fatalf("after CAS: %+v, %v", it, err)
	}

	if err := mc.Set(&memcache.Item{Key: "n", Value: []byte("41")}); err != nil {
		t.Fatalf("Set n: %v", err)
	}
	if v, err := mc.Increment("n", 1); err != nil || v != 42 {
		t.Fatalf("Increment = %d, %v", v, err)
	}
	if v, err := mc.Decrement("n", 50); err != nil || v != 0 {
		t.Fatalf("Decrement = %d, %v; want 0 (floor)", v, err)
	}
	if _, err := mc.Increment("nokey", 1); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Increment missing: %v", err)
	}

	if err := mc.Touch("k2", 100); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if err := mc.Touch("missing", 100); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Touch missing: %v", err)
	}
	if err := mc.Touch("k2", -1); err != nil {
		t.Fatalf("Touch to expire: %v", err)
	}
	if _, err := mc.Get("k2"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get after touch -1: %v, want miss", err)
	}

	if err := mc.Delete("k1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := mc.Delete("k1"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Delete again: %v, want ErrCacheMiss", err)
	}
	if err := mc.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := mc.FlushAll(); err != nil {
		t.Fatalf("FlushAll: %v", err)
	}
	if _, err := mc.Get("n"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get after FlushAll: %v", err)
	}
}
