package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/client"
	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

const kernelDSCP = 46

// backend is a memcached-compatible server listening on the same TCP and UDP port.
type backend struct {
	addr string
	// dial, when set, opens sockets where the server can be reached (its network namespace).
	dial func(ctx context.Context, network, address string) (net.Conn, error)
	// kernelHits, when set, reads the kernel path's hit counter.
	kernelHits func(t *testing.T) uint64
}

// newClient returns a client of b with the timeouts of a busy test machine, and a gomemcache
// client of the same server to check what the client reads against.
func (b *backend) newClient(t *testing.T) (*client.Client, *memcache.Client) {
	t.Helper()
	c := client.New(b.addr)
	c.UDPTimeout = time.Second
	c.Timeout = 2 * time.Second
	c.KernelDSCP = kernelDSCP
	mc := memcache.New(b.addr)
	mc.Timeout = 2 * time.Second
	if b.dial != nil {
		c.DialContext = b.dial
		mc.DialContext = b.dial
		c.DialUDP = func(ctx context.Context, network, address string) (*net.UDPConn, error) {
			nc, err := b.dial(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return nc.(*net.UDPConn), nil
		}
	}
	t.Cleanup(func() { _ = c.Close(); _ = mc.Close() })
	return c, mc
}

func memcachedBackend(t *testing.T) *backend {
	m := testenv.StartMemcached(t, true)
	return &backend{addr: m.Addr}
}

func serveBackend(t *testing.T) *backend {
	return &backend{addr: client.StartServe(t, nil, testenv.FreePort(t), nil)}
}

// kernelBackend is the Go server with the XDP program in generic mode on the loopback of a
// network namespace of its own, marking its replies with kernelDSCP; client sockets are opened
// in that namespace.
func kernelBackend(t *testing.T) *backend {
	testenv.RequireRoot(t)
	ns, err := netns.NewIsolated("xccl")
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	const port = 11211
	kc, err := bpf.New(bpf.Options{Port: port, MaxBytes: 8 << 20, MaxEntries: 4096,
		ReplyDSCP: kernelDSCP, Admission: "always", MTU: 1500})
	if err != nil {
		t.Fatalf("load the XDP program: %+v", err)
	}
	t.Cleanup(func() { _ = kc.Close() })
	if err := ns.Do(func() error {
		_, err := kc.Attach("lo", bpf.ModeGeneric)
		return err
	}); err != nil {
		t.Fatalf("attach XDP to lo (generic): %v", err)
	}
	b := &backend{addr: client.StartServe(t, ns, port, kc)}
	b.dial = func(ctx context.Context, network, address string) (conn net.Conn, err error) {
		err = ns.Do(func() error {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
	b.kernelHits = func(t *testing.T) uint64 {
		s, err := kc.Stats()
		if err != nil {
			t.Fatalf("kernel stats: %v", err)
		}
		return s.Hits
	}
	return b
}

// clientCase is one row of the table every backend runs. p prefixes the keys it uses.
type clientCase struct {
	name string
	run  func(t *testing.T, c *client.Client, mc *memcache.Client, p string)
}

func mustSet(t *testing.T, c *client.Client, it *client.Item) {
	t.Helper()
	if err := c.Set(it); err != nil {
		t.Fatalf("set %q: %v", it.Key, err)
	}
}

func mustGet(t *testing.T, c *client.Client, key string, value []byte, flags uint32) *client.Item {
	t.Helper()
	it, err := c.Get(key)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	if it.Key != key || !bytes.Equal(it.Value, value) || it.Flags != flags {
		t.Fatalf("get %q: key %q flags %d value %q; want flags %d value %q", key, it.Key, it.Flags,
			trim(it.Value), flags, trim(value))
	}
	return it
}

func wantMiss(t *testing.T, c *client.Client, key string) {
	t.Helper()
	if it, err := c.Get(key); err != client.ErrCacheMiss {
		t.Fatalf("get %q: item %v, err %v; want ErrCacheMiss", key, it, err)
	}
}

func trim(b []byte) string {
	if len(b) > 40 {
		return fmt.Sprintf("%q...(%d bytes)", b[:40], len(b))
	}
	return string(b)
}

func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seed)
	}
	return b
}

var clientCases = []clientCase{
	{"set and get, with the CAS id gomemcache reads", func(t *testing.T, c *client.Client, mc *memcache.Client, p string) {
		mustSet(t, c, &client.Item{Key: p + "a", Value: []byte("hello"), Flags: 42})
		it := mustGet(t, c, p+"a", []byte("hello"), 42)
		tcp, err := mc.Get(p + "a")
		if err != nil {
			t.Fatalf("gomemcache get: %v", err)
		}
		if it.CasID == 0 || it.CasID != tcp.CasID {
			t.Fatalf("CAS id %d over UDP, %d over TCP", it.CasID, tcp.CasID)
		}
	}},
	{"miss and malformed keys", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		wantMiss(t, c, p+"nothing")
		for _, k := range []string{"has space", "ctl\x01", strings.Repeat("k", 251)} {
			if _, err := c.Get(k); err != client.ErrMalformedKey {
				t.Errorf("get %q: err %v, want ErrMalformedKey", k, err)
			}
		}
		if _, err := c.GetMulti([]string{p + "ok", "bad key"}); err != client.ErrMalformedKey {
			t.Errorf("GetMulti with a bad key: err %v, want ErrMalformedKey", err)
		}
	}},
	{"values that look like protocol, and empty ones", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		tricky := []byte("x\r\nEND\r\nVALUE other 0 1\r\nz\r\n")
		all := make([]byte, 256)
		for i := range all {
			all[i] = byte(i)
		}
		for i, v := range [][]byte{tricky, all, {}} {
			k := p + "v" + strconv.Itoa(i)
			mustSet(t, c, &client.Item{Key: k, Value: v, Flags: uint32(i)})
			mustGet(t, c, k, v, uint32(i))
		}
	}},
	{"GetMulti over several request datagrams, with misses and duplicates", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		var keys []string
		want := map[string][]byte{}
		for i := range 120 {
			k := p + "multi-" + strings.Repeat("x", 40) + strconv.Itoa(i)
			keys = append(keys, k)
			if i%3 != 0 {
				v := pattern(10+i*9, i)
				mustSet(t, c, &client.Item{Key: k, Value: v, Flags: uint32(i)})
				want[k] = v
			}
		}
		keys = append(keys, keys[1], keys[2])
		got, err := c.GetMulti(keys)
		if err != nil {
			t.Fatalf("GetMulti: %v", err)
		}
		if len(got) != len(want) {
			t.Fatalf("GetMulti: %d items, want %d", len(got), len(want))
		}
		for k, v := range want {
			if it := got[k]; it == nil || !bytes.Equal(it.Value, v) || it.Key != k || it.CasID == 0 {
				t.Fatalf("GetMulti[%q] = %+v, want value %q", k, it, trim(v))
			}
		}
		if got, err := c.GetMulti(nil); err != nil || got == nil || len(got) != 0 {
			t.Fatalf("GetMulti(nil) = %v, %v; want an empty map", got, err)
		}
	}},
	{"a value over many reply datagrams", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		v := pattern(200_000, 3)
		mustSet(t, c, &client.Item{Key: p + "big", Value: v, Flags: 9})
		mustGet(t, c, p+"big", v, 9)
		got, err := c.GetMulti([]string{p + "big", p + "nope"})
		if err != nil || len(got) != 1 || !bytes.Equal(got[p+"big"].Value, v) {
			t.Fatalf("GetMulti of the big value: %d items, err %v", len(got), err)
		}
	}},
	{"compare and swap with the CAS id read over UDP", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		mustSet(t, c, &client.Item{Key: p + "cas", Value: []byte("v1")})
		it := mustGet(t, c, p+"cas", []byte("v1"), 0)
		it.Value = []byte("v2")
		if err := c.CompareAndSwap(it); err != nil {
			t.Fatalf("cas with a fresh id: %v", err)
		}
		mustGet(t, c, p+"cas", []byte("v2"), 0)
		it.Value = []byte("v3")
		if err := c.CompareAndSwap(it); err != client.ErrCASConflict {
			t.Fatalf("cas with a stale id: %v, want ErrCASConflict", err)
		}
		if err := c.Delete(p + "cas"); err != nil {
			t.Fatal(err)
		}
		if err := c.CompareAndSwap(it); err != client.ErrCacheMiss {
			t.Fatalf("cas of a deleted item: %v, want ErrCacheMiss (NOT_FOUND)", err)
		}
	}},
	{"the other commands, through gomemcache", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		k := p + "w"
		if err := c.Add(&client.Item{Key: k, Value: []byte("a")}); err != nil {
			t.Fatalf("add: %v", err)
		}
		if err := c.Add(&client.Item{Key: k, Value: []byte("b")}); err != client.ErrNotStored {
			t.Fatalf("add over an item: %v, want ErrNotStored", err)
		}
		if err := c.Replace(&client.Item{Key: p + "none", Value: []byte("b")}); err != client.ErrNotStored {
			t.Fatalf("replace of nothing: %v, want ErrNotStored", err)
		}
		if err := c.Append(&client.Item{Key: k, Value: []byte("z")}); err != nil {
			t.Fatalf("append: %v", err)
		}
		if err := c.Prepend(&client.Item{Key: k, Value: []byte("<")}); err != nil {
			t.Fatalf("prepend: %v", err)
		}
		mustGet(t, c, k, []byte("<az"), 0)
		if err := c.Touch(k, 100); err != nil {
			t.Fatalf("touch: %v", err)
		}
		if err := c.Touch(p+"none", 100); err != client.ErrCacheMiss {
			t.Fatalf("touch of nothing: %v, want ErrCacheMiss", err)
		}
		if err := c.Delete(k); err != nil {
			t.Fatalf("delete: %v", err)
		}
		wantMiss(t, c, k)
		if err := c.Delete(k); err != client.ErrCacheMiss {
			t.Fatalf("delete of nothing: %v, want ErrCacheMiss", err)
		}
		mustSet(t, c, &client.Item{Key: p + "n", Value: []byte("10")})
		if n, err := c.Increment(p+"n", 5); err != nil || n != 15 {
			t.Fatalf("incr: %d, %v", n, err)
		}
		if n, err := c.Decrement(p+"n", 20); err != nil || n != 0 {
			t.Fatalf("decr below zero: %d, %v", n, err)
		}
		mustGet(t, c, p+"n", []byte("0 "), 0) // memcached keeps the length: "10" - 20 is "0 "
		if err := c.Ping(); err != nil {
			t.Fatalf("ping: %v", err)
		}
	}},
	{"every read after a write sees it", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		for i := range 30 {
			v := []byte("version-" + strconv.Itoa(i))
			mustSet(t, c, &client.Item{Key: p + "rw", Value: v, Flags: uint32(i)})
			// The first get may fill the kernel cache, the next ones are its to answer.
			for range 3 {
				mustGet(t, c, p+"rw", v, uint32(i))
			}
			got, err := c.GetMulti([]string{p + "rw"})
			if err != nil || got[p+"rw"] == nil || !bytes.Equal(got[p+"rw"].Value, v) {
				t.Fatalf("GetMulti after set %d: %v, %v", i, got, err)
			}
		}
	}},
	{"flush_all", func(t *testing.T, c *client.Client, _ *memcache.Client, p string) {
		mustSet(t, c, &client.Item{Key: p + "f", Value: []byte("x")})
		mustGet(t, c, p+"f", []byte("x"), 0)
		mustGet(t, c, p+"f", []byte("x"), 0)
		if err := c.FlushAll(); err != nil {
			t.Fatalf("flush_all: %v", err)
		}
		wantMiss(t, c, p+"f")
	}},
}

// TestBackends runs the same table against Debian's memcached with UDP on, the Go server alone,
// and the Go server with its kernel path, where the kernel must have answered some of the gets.
// On loopback nothing is lost: every get must have been answered over UDP.
func TestBackends(t *testing.T) {
	for _, bc := range []struct {
		name  string
		start func(t *testing.T) *backend
	}{
		{"memcached", memcachedBackend},
		{"serve", serveBackend},
		{"serve+xdp", kernelBackend},
	} {
		t.Run(bc.name, func(t *testing.T) {
			b := bc.start(t)
			c, mc := b.newClient(t)
			var hitsBefore uint64
			if b.kernelHits != nil {
				hitsBefore = b.kernelHits(t)
			}
			for i, cc := range clientCases {
				before := c.Stats()
				if !t.Run(cc.name, func(t *testing.T) { cc.run(t, c, mc, fmt.Sprintf("t%d-", i)) }) {
					continue
				}
				after := c.Stats()
				if after.TCPGets != before.TCPGets || after.UDPTimeouts != before.UDPTimeouts {
					t.Errorf("%s: %d gets over TCP, %d UDP timeouts on loopback; fallbacks %v",
						cc.name, after.TCPGets-before.TCPGets, after.UDPTimeouts-before.UDPTimeouts, after.Fallbacks)
				}
			}
			s := c.Stats()
			if s.UDPGets == 0 {
				t.Errorf("no get answered over UDP: %+v", s)
			}
			if b.kernelHits == nil {
				if s.KernelReplies != 0 {
					t.Errorf("%d replies marked as the kernel's without a kernel path", s.KernelReplies)
				}
				return
			}
			hits := b.kernelHits(t) - hitsBefore
			if hits == 0 || s.KernelReplies == 0 || s.KernelReplies > hits {
				t.Errorf("kernel hits rose by %d, client counted %d kernel replies of %d UDP gets",
					hits, s.KernelReplies, s.UDPGets)
			}
			t.Logf("%d UDP gets, %d answered by the kernel (kernel hits +%d)", s.UDPGets, s.KernelReplies, hits)
		})
	}
}

// TestUDPOff checks that DisableUDP sends gets over TCP, as gomemcache does.
func TestUDPOff(t *testing.T) {
	b := serveBackend(t)
	c, _ := b.newClient(t)
	c.DisableUDP = true
	mustSet(t, c, &client.Item{Key: "k", Value: []byte("v")})
	mustGet(t, c, "k", []byte("v"), 0)
	if _, err := c.GetMulti([]string{"k", "j"}); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.UDPGets != 0 || s.TCPGets != 2 || s.Fallbacks != ([len(s.Fallbacks)]uint64{}) {
		t.Fatalf("stats with UDP off: %+v", s)
	}
}

// TestErrorsAreGomemcaches checks that the errors are gomemcache's values, so code comparing
// them keeps working after its import changes.
func TestErrorsAreGomemcaches(t *testing.T) {
	for _, p := range [][2]error{{client.ErrCacheMiss, memcache.ErrCacheMiss}, {client.ErrCASConflict, memcache.ErrCASConflict},
		{client.ErrNotStored, memcache.ErrNotStored}, {client.ErrMalformedKey, memcache.ErrMalformedKey},
		{client.ErrNoServers, memcache.ErrNoServers}, {client.ErrServerError, memcache.ErrServerError}} {
		if !errors.Is(p[0], p[1]) || p[0] != p[1] {
			t.Errorf("%v is not gomemcache's", p[0])
		}
	}
	if _, err := client.New().Get("k"); err != client.ErrNoServers {
		t.Errorf("get without servers: %v, want ErrNoServers", err)
	}
}

// TestSeveralServers checks that keys go where gomemcache puts them: items stored by gomemcache
// across three servers are all found over UDP, one by one and in one GetMulti, and every
// server holds some.
func TestSeveralServers(t *testing.T) {
	var addrs []string
	for range 3 {
		addrs = append(addrs, serveBackend(t).addr)
	}
	mc := memcache.New(addrs...)
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = "spread-" + strconv.Itoa(i)
		if err := mc.Set(&memcache.Item{Key: keys[i], Value: []byte(keys[i])}); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range addrs {
		got, err := memcache.New(a).GetMulti(keys)
		if err != nil || len(got) == 0 || len(got) == len(keys) {
			t.Fatalf("server %s holds %d of %d keys (%v): want a share", a, len(got), len(keys), err)
		}
	}
	c := client.New(addrs...)
	c.UDPTimeout = time.Second
	defer c.Close()
	for _, k := range keys {
		mustGet(t, c, k, []byte(k), 0)
	}
	got, err := c.GetMulti(keys)
	if err != nil || len(got) != len(keys) {
		t.Fatalf("GetMulti across the servers: %d of %d items, %v", len(got), len(keys), err)
	}
	for _, k := range keys {
		if got[k] == nil || string(got[k].Value) != k {
			t.Fatalf("GetMulti[%s] = %+v", k, got[k])
		}
	}
	if s := c.Stats(); s.UDPGets != 2*uint64(len(keys)) || s.TCPGets != 0 {
		t.Fatalf("stats %+v: want every get over UDP", s)
	}
}
