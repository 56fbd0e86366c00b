package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// nutcrackerPort is where twemproxy listens, on the server namespace's lo.
const nutcrackerPort = 22121

// TestNutcracker puts Debian's twemproxy (nutcracker, memcache protocol, ketama) in front of two
// serve processes, each with the kernel path attached: one on the server namespace's lo in
// generic mode, one on the server veth in native mode (two XDP programs cannot share one lo).
// Clients talk to nutcracker: keys land on both servers, every command comes back right, and a
// write through nutcracker is never followed by a stale kernel read on the server that owns the key.
func TestNutcracker(t *testing.T) {
	bin := testenv.LookPath(t, "nutcracker")
	r := newBareRig(t)
	r.startServe(t) // 198.18.0.1:11211, native XDP on the server veth
	lo := startLoServeOn(t, r.pair)
	servers := []struct {
		name, addr string
		udp        *udpGetter
	}{
		{"lo", lo.addr.String(), newUDPGetter(t, r.pair.Server, lo.addr, replyWait)},
		{"veth", r.addr.String(), r.udpGetter(t, replyWait)},
	}

	dir := t.TempDir()
	conf := filepath.Join(dir, "nutcracker.yml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `cache:
  listen: 127.0.0.1:%d
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  auto_eject_hosts: false
  servers:
   - %s:1 %s
   - %s:1 %s
`, nutcrackerPort, servers[0].addr, servers[0].name, servers[1].addr, servers[1].name), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "--test-conf", "--conf-file", conf).CombinedOutput(); err != nil {
		t.Fatalf("nutcracker rejects its configuration: %v\n%s", err, out)
	}
	proxy := startNutcracker(t, r, bin, conf, dir)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(nutcrackerPort))
	mc := memcacheClientIn(r.pair.Server, addr)
	waitNutcracker(t, mc, proxy)

	// Keys spread over both servers; each key lives on exactly one.
	const n = 64
	direct := []*textClient{dialTextIn(t, r.pair.Server, servers[0].addr), dialTextIn(t, r.pair.Server, servers[1].addr)}
	var keys []string
	owner := map[string]int{}
	perServer := make([]int, len(servers))
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("tw-%d", i)
		keys = append(keys, key)
		if err := mc.Set(&memcache.Item{Key: key, Value: []byte("v" + key), Flags: uint32(i)}); err != nil {
			t.Fatalf("set %s through nutcracker: %v", key, err)
		}
		owner[key] = -1
		for s, c := range direct {
			res, err := c.gets(key)
			if err != nil {
				t.Fatalf("gets %s from %s: %v", key, servers[s].name, err)
			}
			if !res.found {
				continue
			}
			if owner[key] >= 0 || res.value != "v"+key {
				t.Fatalf("%s: on %s with %q, owner so far %d", key, servers[s].name, res.value, owner[key])
			}
			owner[key] = s
			perServer[s]++
		}
		if owner[key] < 0 {
			t.Fatalf("%s: acknowledged by nutcracker, on neither server", key)
		}
	}
	t.Logf("keys per server: %s %d, %s %d", servers[0].name, perServer[0], servers[1].name, perServer[1])
	for s, c := range perServer {
		if c == 0 {
			t.Fatalf("no key landed on %s", servers[s].name)
		}
	}

	// Reads through nutcracker, one by one and all at once (nutcracker splits the multi-get).
	for i, key := range keys {
		it, err := mc.Get(key)
		if err != nil || string(it.Value) != "v"+key || it.Flags != uint32(i) {
			t.Fatalf("get %s through nutcracker: %+v %v", key, it, err)
		}
	}
	m, err := mc.GetMulti(keys)
	if err != nil || len(m) != n {
		t.Fatalf("multi-get of %d keys through nutcracker: %d items, %v", n, len(m), err)
	}
	for _, key := range keys {
		if it := m[key]; it == nil || string(it.Value) != "v"+key {
			t.Fatalf("multi-get %s: %+v", key, it)
		}
	}

	// Deletes, counters, CAS and append through nutcracker.
	var live []string // every other key stays, the last one for cas and append
	for i, key := range keys {
		if i%2 == 1 {
			if i < n-1 {
				live = append(live, key)
			}
			continue
		}
		if err := mc.Delete(key); err != nil {
			t.Fatalf("delete %s through nutcracker: %v", key, err)
		}
		if res, err := direct[owner[key]].gets(key); err != nil || res.found {
			t.Fatalf("%s still on %s after delete: %+v %v", key, servers[owner[key]].name, res, err)
		}
		if _, err := mc.Get(key); !errors.Is(err, memcache.ErrCacheMiss) {
			t.Fatalf("get %s through nutcracker after delete: %v, want a miss", key, err)
		}
	}
	if err := mc.Set(&memcache.Item{Key: "tw-n", Value: []byte("41")}); err != nil {
		t.Fatalf("set counter: %v", err)
	}
	if v, err := mc.Increment("tw-n", 1); err != nil || v != 42 {
		t.Fatalf("incr through nutcracker = %d, %v", v, err)
	}
	if v, err := mc.Decrement("tw-n", 2); err != nil || v != 40 {
		t.Fatalf("decr through nutcracker = %d, %v", v, err)
	}
	it, err := mc.Get(keys[n-1])
	if err != nil {
		t.Fatalf("get for cas: %v", err)
	}
	it.Value = []byte("swapped")
	if err := mc.CompareAndSwap(it); err != nil {
		t.Fatalf("cas through nutcracker: %v", err)
	}
	if err := mc.CompareAndSwap(it); !errors.Is(err, memcache.ErrCASConflict) {
		t.Fatalf("stale cas through nutcracker: %v, want a conflict", err)
	}
	if err := mc.Append(&memcache.Item{Key: keys[n-1], Value: []byte("+")}); err != nil {
		t.Fatalf("append through nutcracker: %v", err)
	}
	if it, err := mc.Get(keys[n-1]); err != nil || string(it.Value) != "swapped+" {
		t.Fatalf("get after cas and append through nutcracker: %+v %v", it, err)
	}

	// A write acknowledged by nutcracker is what the next UDP get returns from the server that
	// owns the key, though the kernel held the older value the moment before.
	for s, srv := range servers {
		var key string
		for _, k := range live {
			if owner[k] == s {
				key = k
				break
			}
		}
		if key == "" {
			t.Fatalf("no live key on %s", srv.name)
		}
		before := direct[s].stat(t, "kernel_get_hits")
		const rounds = 20
		for i := 0; i < rounds; i++ {
			fillAndHit(t, srv.udp, key, udpWantItem(t, mc, key))
			val := fmt.Sprintf("round-%d", i)
			if err := mc.Set(&memcache.Item{Key: key, Value: []byte(val), Flags: 5}); err != nil {
				t.Fatalf("set %s through nutcracker: %v", key, err)
			}
			reply, kernel, err := srv.udp.do("get " + key + "\r\n")
			if want := udpWant(key, 5, val); err != nil || reply != want {
				t.Fatalf("%s round %d: UDP get after an acknowledged write through nutcracker: %q (kernel %v) %v; want %q",
					srv.name, i, reply, kernel, err, want)
			}
		}
		if after := direct[s].stat(t, "kernel_get_hits"); after-before < rounds {
			t.Errorf("%s: kernel_get_hits rose by %d over %d rounds, want at least one per round", srv.name, after-before, rounds)
		}
	}

	// pymemcache through nutcracker too: its script keeps to the commands a proxy forwards.
	runPythonClient(t, r.pair.Server, "pymemcache_ops.py", addr, "twpy-")
}

// udpWantItem is the UDP get reply for key's current value, read through the TCP client.
func udpWantItem(t *testing.T, mc *memcache.Client, key string) string {
	t.Helper()
	it, err := mc.Get(key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return udpWant(key, it.Flags, string(it.Value))
}

// startNutcracker runs nutcracker with conf in the rig's server namespace, its log and pid file in
// dir and its stats port on that namespace's lo; it is killed when the test ends, or with the test
// process.
func startNutcracker(t *testing.T, r *rig, bin, conf, dir string) *serveProc {
	t.Helper()
	log := filepath.Join(dir, "nutcracker.log")
	return startInNS(t, r.pair.Server, func() string {
		b, _ := os.ReadFile(log)
		return "\nits log:\n" + tail(string(b), 4096)
	}, bin, "--conf-file", conf, "--output", log, "--pid-file", filepath.Join(dir, "nutcracker.pid"),
		"--stats-port", "22222", "--stats-addr", "127.0.0.1")
}

// waitNutcracker returns once a get through nutcracker gets an answer (a miss).
func waitNutcracker(t *testing.T, mc *memcache.Client, p *serveProc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, err := mc.Get("nutcracker-readiness")
		if errors.Is(err, memcache.ErrCacheMiss) {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("nutcracker exited: %v\n%s", p.err, p.log.String())
		case <-ctx.Done():
			t.Fatalf("nutcracker not answering: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
