package client

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// relay sits between the client's UDP socket and a server's UDP port and lets a test decide
// the fate of every datagram: forward it, drop it, hold it back so the next one overtakes it,
// send it twice, send it late, or answer in the server's stead.
type relay struct {
	t      *testing.T
	ln     *net.UDPConn
	server *net.UDPAddr
	fate   func(toServer bool, d []byte) action

	mu   sync.Mutex
	ups  map[string]*net.UDPConn // by client address
	held map[bool][]byte         // per direction, the datagram the next one overtakes
	wg   sync.WaitGroup
}

type action struct {
	drop, hold, twice bool
	delay             time.Duration
	answer            []byte // reply payload sent to the client instead of forwarding
}

func startRelay(t *testing.T, server string, fate func(toServer bool, d []byte) action) *relay {
	t.Helper()
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, ln: ln, server: sa, fate: fate, ups: map[string]*net.UDPConn{}, held: map[bool][]byte{}}
	r.wg.Add(1)
	go r.fromClients()
	t.Cleanup(func() {
		_ = ln.Close()
		r.mu.Lock()
		for _, u := range r.ups {
			_ = u.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *relay) port() int { return r.ln.LocalAddr().(*net.UDPAddr).Port }

func (r *relay) fromClients() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := r.ln.ReadFromUDP(buf)
		if err != nil {
			return
		}
		d := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		up := r.ups[from.String()]
		if up == nil {
			if up, err = net.DialUDP("udp", nil, r.server); err != nil {
				r.mu.Unlock()
				r.t.Errorf("relay: dial the server: %v", err)
				return
			}
			r.ups[from.String()] = up
			r.wg.Add(1)
			go r.fromServer(up, from)
		}
		r.mu.Unlock()
		a := r.fate(true, d)
		if a.answer != nil {
			h, _ := protocol.ParseFrameHeader(d)
			for _, rd := range protocol.SplitReply(h.RequestID, a.answer, protocol.MaxDatagram) {
				_, _ = r.ln.WriteToUDP(rd, from)
			}
			continue
		}
		r.pass(true, d, a, func(b []byte) { _, _ = up.Write(b) })
	}
}

func (r *relay) fromServer(up *net.UDPConn, client *net.UDPAddr) {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		d := append([]byte(nil), buf[:n]...)
		r.pass(false, d, r.fate(false, d), func(b []byte) { _, _ = r.ln.WriteToUDP(b, client) })
	}
}

// pass applies a to d: a held datagram goes out after the next one of its direction.
func (r *relay) pass(toServer bool, d []byte, a action, send func([]byte)) {
	switch {
	case a.drop:
		return
	case a.delay > 0:
		time.AfterFunc(a.delay, func() { send(d) })
		return
	}
	r.mu.Lock()
	prev := r.held[toServer]
	delete(r.held, toServer)
	if a.hold && prev == nil {
		r.held[toServer] = d
		d = nil
	}
	r.mu.Unlock()
	if d != nil {
		send(d)
		if a.twice {
			send(d)
		}
	}
	if prev != nil {
		send(prev)
	}
}

// versioned is the value of key at version v: its own name and version, then bytes derived
// from both, sized from a few bytes to several datagrams, and a checksum.
func versioned(key string, v uint64) []byte {
	size := int(crc32.ChecksumIEEE([]byte(key+strconv.FormatUint(v, 10)))%6000) + 1
	b := fmt.Appendf(nil, "%s@%d:", key, v)
	for i := range size {
		b = append(b, byte('a'+(i+int(v))%26))
	}
	return binary32(b, crc32.ChecksumIEEE(b))
}

func binary32(b []byte, x uint32) []byte {
	return append(b, byte(x>>24), byte(x>>16), byte(x>>8), byte(x))
}

// checkVersioned returns the version a value holds, or an error if it is not an intact value of key.
func checkVersioned(key string, val []byte) (uint64, error) {
	i := bytes.IndexByte(val, ':')
	at := bytes.LastIndexByte(val[:max(i, 0)], '@')
	if i < 0 || at < 0 || string(val[:at]) != key {
		return 0, fmt.Errorf("value %q... is not one of %q", val[:min(len(val), 30)], key)
	}
	v, err := strconv.ParseUint(string(val[at+1:i]), 10, 64)
	if err != nil || !bytes.Equal(val, versioned(key, v)) {
		return 0, fmt.Errorf("value of %q is torn or foreign (%d bytes)", key, len(val))
	}
	return v, nil
}

// TestLossyPath runs concurrent readers and writers through a relay that drops, reorders,
// duplicates and delays datagrams both ways. Every read must return an intact value of its key,
// never older than the last write acknowledged before the read began; the losses must have
// been met with retries and TCP fallbacks.
func TestLossyPath(t *testing.T) {
	for _, name := range []string{"memcached", "serve"} {
		t.Run(name, func(t *testing.T) {
			var addr string
			if name == "memcached" {
				addr = testenv.StartMemcached(t, true).Addr
			} else {
				addr = startServe(t, nil, testenv.FreePort(t), nil)
			}
			var mu sync.Mutex
			rng := rand.New(rand.NewPCG(1, 2))
			var late atomic.Int64
			rl := startRelay(t, addr, func(toServer bool, d []byte) action {
				mu.Lock()
				defer mu.Unlock()
				p := rng.Float64()
				switch {
				case p < 0.10:
					return action{drop: true}
				case p < 0.25:
					return action{hold: true}
				case p < 0.30:
					return action{twice: true}
				case p < 0.32 && !toServer:
					late.Add(1)
					return action{delay: 150 * time.Millisecond} // past the attempt's timeout
				}
				return action{}
			})
			c := New(addr)
			c.UDPPort = rl.port()
			c.UDPTimeout = 60 * time.Millisecond
			c.UDPRetries = 2
			c.Timeout = 2 * time.Second
			c.MaxIdleConns = 16
			defer c.Close()

			const keys, writers, readers, rounds = 24, 3, 6, 90
			acked := make([]atomic.Uint64, keys)
			key := func(i int) string { return "lossy-" + strconv.Itoa(i) }
			for i := range keys {
				if err := c.Set(&Item{Key: key(i), Value: versioned(key(i), 1)}); err != nil {
					t.Fatal(err)
				}
				acked[i].Store(1)
			}
			var wg sync.WaitGroup
			errc := make(chan error, readers+writers)
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for r := range rounds / 3 {
						i := (w + r*writers) % keys // each key has one writer: versions rise in order
						v := acked[i].Load() + 1
						if err := c.Set(&Item{Key: key(i), Value: versioned(key(i), v)}); err != nil {
							errc <- fmt.Errorf("set %s: %w", key(i), err)
							return
						}
						acked[i].Store(v)
					}
				}()
			}
			for rd := range readers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(rd), 7))
					for range rounds {
						if r.IntN(4) == 0 {
							ks := []string{key(r.IntN(keys)), key(r.IntN(keys)), key(r.IntN(keys))}
							floor := make([]uint64, len(ks))
							for j, k := range ks {
								floor[j] = acked[keyIndex(k)].Load()
							}
							m, err := c.GetMulti(ks)
							if err != nil {
								errc <- fmt.Errorf("GetMulti: %w", err)
								return
							}
							for j, k := range ks {
								if err := checkRead(k, m[k], floor[j]); err != nil {
									errc <- err
									return
								}
							}
							continue
						}
						i := r.IntN(keys)
						floor := acked[i].Load()
						it, err := c.Get(key(i))
						if err != nil {
							errc <- fmt.Errorf("get %s: %w", key(i), err)
							return
						}
						if err := checkRead(key(i), it, floor); err != nil {
							errc <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				t.Error(err)
			}
			s := c.Stats()
			t.Logf("stats %+v; %d replies sent late", s, late.Load())
			if s.UDPRetries == 0 || s.Fallback(ReasonTimeout) == 0 || s.UDPGets == 0 {
				t.Errorf("expected UDP answers, retries and timeout fallbacks through the relay: %+v", s)
			}
		})
	}
}

func keyIndex(k string) int {
	i, _ := strconv.Atoi(k[len("lossy-"):])
	return i
}

func checkRead(key string, it *Item, floor uint64) error {
	if it == nil {
		return fmt.Errorf("get %s: a miss for a key always set", key)
	}
	v, err := checkVersioned(key, it.Value)
	if err != nil {
		return err
	}
	if v < floor {
		return fmt.Errorf("get %s: version %d, older than %d acknowledged before the read", key, v, floor)
	}
	return nil
}

// TestFallbackReasons checks each way a UDP get can fail: the value comes over TCP, and the
// fallback is counted under its reason.
func TestFallbackReasons(t *testing.T) {
	addr := startServe(t, nil, testenv.FreePort(t), nil)
	seed := New(addr)
	if err := seed.Set(&Item{Key: "k", Value: []byte("right"), Flags: 3}); err != nil {
		t.Fatal(err)
	}
	answer := func(reply string) func(bool, []byte) action {
		return func(toServer bool, _ []byte) action {
			if toServer {
				return action{answer: []byte(reply)}
			}
			return action{}
		}
	}
	closedPort := testenv.FreePort(t)
	for _, tc := range []struct {
		name   string
		fate   func(bool, []byte) action // nil: no relay, the UDP port is closed
		reason Reason
	}{
		{"server error", answer("SERVER_ERROR reply too large for UDP, use TCP\r\n"), ReasonServerError},
		{"error reply", answer("ERROR\r\n"), ReasonBadReply},
		{"another key", answer("VALUE j 3 5 1\r\nwrong\r\nEND\r\n"), ReasonBadReply},
		{"short value", answer("VALUE k 3 9 1\r\nwrong\r\nEND\r\n"), ReasonBadReply},
		{"trailing bytes", answer("VALUE k 3 5 1\r\nwrong\r\nEND\r\nEND\r\n"), ReasonBadReply},
		{"no END", answer("VALUE k 3 5 1\r\nwrong\r\n"), ReasonBadReply},
		{"silence", func(bool, []byte) action { return action{drop: true} }, ReasonTimeout},
		{"closed port", nil, ReasonUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(addr)
			c.UDPTimeout = 30 * time.Millisecond
			c.UDPPort = closedPort
			if tc.fate != nil {
				c.UDPPort = startRelay(t, addr, tc.fate).port()
			}
			defer c.Close()
			it, err := c.Get("k")
			if err != nil || string(it.Value) != "right" || it.Flags != 3 {
				t.Fatalf("get: %+v, %v; want the value over TCP", it, err)
			}
			if s := c.Stats(); tc.reason == ReasonTimeout && (s.UDPTimeouts != 2 || s.UDPRetries != 1) {
				t.Fatalf("a silent server: want the get to time out twice, after one retry: %+v", s)
			}
			m, err := c.GetMulti([]string{"k", "absent"})
			if err != nil || len(m) != 1 || string(m["k"].Value) != "right" {
				t.Fatalf("GetMulti: %v, %v", m, err)
			}
			s := c.Stats()
			if s.UDPGets != 0 || s.Fallback(tc.reason) == 0 || s.TCPGets != 3 {
				t.Fatalf("want 3 gets over TCP, at least one for %v: %+v", tc.reason, s)
			}
		})
	}
}

// TestDownAfterTimeouts checks that a server whose UDP port stays silent is left alone for a
// while: after downAfter gets time out in a row, the next ones go straight to TCP.
func TestDownAfterTimeouts(t *testing.T) {
	addr := startServe(t, nil, testenv.FreePort(t), nil)
	rl := startRelay(t, addr, func(bool, []byte) action { return action{drop: true} })
	c := New(addr)
	c.UDPPort = rl.port()
	c.UDPTimeout = 10 * time.Millisecond
	c.UDPRetries = -1
	defer c.Close()
	for range downAfter + 2 {
		if _, err := c.Get("k"); err != ErrCacheMiss {
			t.Fatalf("get: %v, want a miss over TCP", err)
		}
	}
	s := c.Stats()
	if s.Fallback(ReasonTimeout) != downAfter || s.Fallback(ReasonDown) != 2 || s.UDPRetries != 0 {
		t.Fatalf("want %d timeouts then 2 gets with UDP down: %+v", downAfter, s)
	}
}

// TestIPv6 checks a server reached over IPv6: the socket is udp6 and gets are answered over UDP.
func TestIPv6(t *testing.T) {
	ln, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		testenv.Unavailable(t, "no IPv6 loopback: %v", err)
	}
	port := ln.LocalAddr().(*net.UDPAddr).Port
	_ = ln.Close()
	addr := startServeOn(t, nil, net.JoinHostPort("::1", strconv.Itoa(port)), nil)
	c := New(addr)
	c.UDPTimeout = time.Second
	c.KernelDSCP = 46 // no kernel path: nothing may count as marked
	defer c.Close()
	if err := c.Set(&Item{Key: "six", Value: []byte("v6")}); err != nil {
		t.Fatal(err)
	}
	if it, err := c.Get("six"); err != nil || string(it.Value) != "v6" {
		t.Fatalf("get over IPv6: %v, %v", it, err)
	}
	if s := c.Stats(); s.UDPGets != 1 || s.TCPGets != 0 || s.KernelReplies != 0 {
		t.Fatalf("stats %+v, want one get over UDP, unmarked", s)
	}
}

// TestReplyTooLarge checks that a reply of more datagrams than the client reassembles is got
// over TCP.
func TestReplyTooLarge(t *testing.T) {
	c := New(startServe(t, nil, testenv.FreePort(t), nil))
	c.maxReplyDatagrams = 2
	defer c.Close()
	v := bytes.Repeat([]byte("0123456789"), 500) // 4 datagrams
	if err := c.Set(&Item{Key: "big", Value: v}); err != nil {
		t.Fatal(err)
	}
	if it, err := c.Get("big"); err != nil || !bytes.Equal(it.Value, v) {
		t.Fatalf("get: %v", err)
	}
	if err := c.Set(&Item{Key: "small", Value: []byte("s")}); err != nil {
		t.Fatal(err)
	}
	if it, err := c.Get("small"); err != nil || string(it.Value) != "s" {
		t.Fatalf("get small: %v", err)
	}
	if s := c.Stats(); s.Fallback(ReasonTooLarge) != 1 || s.UDPGets != 1 {
		t.Fatalf("stats %+v: want the big value over TCP (too_large), the small one over UDP", s)
	}
}
