package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/server"
)

// TestScaleOut runs two servers behind one client's server list, as a memcached fleet scales
// out: the client picks each key's server, the servers know nothing of each other. Every key
// must live on exactly the server the client picks for it, both servers must carry a real share,
// and a delete through the client must remove the key from that server.
func TestScaleOut(t *testing.T) {
	const keys = 1000
	s1, a1 := startServer(t, server.Config{})
	s2, a2 := startServer(t, server.Config{})
	stores := map[string]*server.Server{a1: s1, a2: s2}

	// The same selector the client uses, to know where each key must be.
	var sl memcache.ServerList
	if err := sl.SetServers(a1, a2); err != nil {
		t.Fatalf("server list: %v", err)
	}
	c := memcache.NewFromSelector(&sl)
	c.Timeout = 2 * time.Second
	c.MaxIdleConns = 4

	key := func(i int) string { return fmt.Sprintf("scaleout:%04d", i) }
	value := func(i int) []byte { return []byte(fmt.Sprintf("value-%d-%s", i, bytes.Repeat([]byte{'x'}, i%50))) }
	owner := func(k string) string {
		addr, err := sl.PickServer(k)
		if err != nil {
			t.Fatalf("pick server for %s: %v", k, err)
		}
		return addr.String()
	}
	other := func(addr string) string {
		if addr == a1 {
			return a2
		}
		return a1
	}

	for i := range keys {
		if err := c.Set(&memcache.Item{Key: key(i), Value: value(i), Flags: uint32(i)}); err != nil {
			t.Fatalf("set %s: %v", key(i), err)
		}
	}

	share := map[string]int{}
	for i := range keys {
		k := key(i)
		own := owner(k)
		if it, ok := stores[own].Store().Get(k); !ok || !bytes.Equal(it.Value, value(i)) {
			t.Errorf("%s not on its server %s (found %v)", k, own, ok)
		}
		if _, ok := stores[other(own)].Store().Get(k); ok {
			t.Errorf("%s also on %s, which the client never picks for it", k, other(own))
		}
		share[own]++
	}
	for addr, n := range map[string]int{a1: share[a1], a2: share[a2]} {
		if n <= keys/5 {
			t.Errorf("server %s holds %d of %d keys, want more than 20%%", addr, n, keys)
		}
		if got := stores[addr].Store().Stats().CurrItems; got != uint64(n) {
			t.Errorf("server %s counts %d items, %d keys map to it", addr, got, n)
		}
	}
	t.Logf("shares: %s %d, %s %d", a1, share[a1], a2, share[a2])

	// Every key reads back through the client, one at a time and in one multi-get.
	all := make([]string, keys)
	for i := range keys {
		all[i] = key(i)
		it, err := c.Get(key(i))
		if err != nil {
			t.Fatalf("get %s: %v", key(i), err)
		}
		if !bytes.Equal(it.Value, value(i)) || it.Flags != uint32(i) {
			t.Errorf("get %s = %q flags %d, want %q flags %d", key(i), it.Value, it.Flags, value(i), i)
		}
	}
	got, err := c.GetMulti(all)
	if err != nil {
		t.Fatalf("get multi: %v", err)
	}
	if len(got) != keys {
		t.Errorf("multi-get returned %d of %d keys", len(got), keys)
	}

	// Delete every third key through the client: gone from its server, the rest untouched.
	deleted := 0
	for i := 0; i < keys; i += 3 {
		k := key(i)
		if err := c.Delete(k); err != nil {
			t.Fatalf("delete %s: %v", k, err)
		}
		deleted++
		if _, ok := stores[owner(k)].Store().Get(k); ok {
			t.Errorf("%s still on %s after delete", k, owner(k))
		}
		if _, err := c.Get(k); !errors.Is(err, memcache.ErrCacheMiss) {
			t.Errorf("get %s after delete: %v, want a miss", k, err)
		}
	}
	for i := range keys {
		k := key(i)
		_, ok := stores[owner(k)].Store().Get(k)
		if want := i%3 != 0; ok != want {
			t.Errorf("%s present %v, want %v", k, ok, want)
		}
	}
	left := s1.Store().Stats().CurrItems + s2.Store().Stats().CurrItems
	if left != uint64(keys-deleted) {
		t.Errorf("%d items left on both servers, want %d", left, keys-deleted)
	}
}

// TestScaleOutServerDown shows what a client sees when one server of two goes away: only that
// server's keys fail, as with memcached, and the other server's keys are still served.
func TestScaleOutServerDown(t *testing.T) {
	s1, a1 := startServer(t, server.Config{})
	// A second address that refuses connections: listen, then close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a2 := l.Addr().String()
	l.Close()

	var sl memcache.ServerList
	if err := sl.SetServers(a1, a2); err != nil {
		t.Fatal(err)
	}
	c := memcache.NewFromSelector(&sl)
	c.Timeout = time.Second
	var up, down int
	for i := range 200 {
		k := fmt.Sprintf("down:%d", i)
		addr, err := sl.PickServer(k)
		if err != nil {
			t.Fatal(err)
		}
		err = c.Set(&memcache.Item{Key: k, Value: []byte("v")})
		switch addr.String() {
		case a1:
			up++
			if err != nil {
				t.Errorf("set %s on the live server: %v", k, err)
			}
			if _, ok := s1.Store().Get(k); !ok {
				t.Errorf("%s missing on the live server", k)
			}
		default:
			down++
			if err == nil {
				t.Errorf("set %s on the dead server succeeded", k)
			}
		}
	}
	if up == 0 || down == 0 {
		t.Fatalf("keys on live server %d, dead server %d: both must be exercised", up, down)
	}
}
