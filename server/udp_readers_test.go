package server

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// slowUpstream is a memcached stand-in for upstream mode: keys starting with "slow" miss after
// delay, every other key is found at once with the value "hi".
func slowUpstream(t *testing.T, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					f := strings.Fields(line)
					switch {
					case len(f) == 0:
						return
					case f[0] == "version":
						_, err = c.Write([]byte("VERSION 1.6.18\r\n"))
					case f[0] == "mg" && len(f) > 1 && strings.HasPrefix(f[1], "slow"):
						time.Sleep(delay)
						_, err = c.Write([]byte("EN\r\n"))
					case f[0] == "mg":
						_, err = c.Write([]byte("VA 2 f0 t-1 c1\r\nhi\r\n"))
					default:
						_, err = c.Write([]byte("SERVER_ERROR not supported here\r\n"))
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// hitLatency sends a UDP GET for a key the server holds while another client's GET waits for
// the slow upstream, and returns how long the hit took.
func hitLatency(t *testing.T, readers int, delay time.Duration) time.Duration {
	t.Helper()
	s := startServer(t, Config{Upstreams: []string{slowUpstream(t, delay)}, UDPReaders: readers})
	fast, slow := dialUDP(t, s.udpAddr), dialUDP(t, s.udpAddr)
	if got, _ := fast.roundTrip("get fast\r\n"); got != "VALUE fast 0 2\r\nhi\r\nEND\r\n" {
		t.Fatalf("first get fast: %q", got)
	}
	slow.send(7, "get slow\r\n")
	time.Sleep(50 * time.Millisecond) // the miss is read and waiting for the upstream
	start := time.Now()
	if got, _ := fast.roundTrip("get fast\r\n"); got != "VALUE fast 0 2\r\nhi\r\nEND\r\n" {
		t.Fatalf("get fast during the slow miss: %q", got)
	}
	t.Logf("readers %d: hit took %s", readers, time.Since(start))
	return time.Since(start)
}

// TestUDPHitDoesNotWaitForUpstreamMiss: in upstream mode a UDP miss waits for memcached in the
// goroutine that read it; with several readers (the upstream default) a hit from another client
// is answered meanwhile. With one reader it waits behind the miss, which shows the test sees
// the difference.
func TestUDPHitDoesNotWaitForUpstreamMiss(t *testing.T) {
	const delay = 800 * time.Millisecond // under the upstream timeout (1 s), and the local copy's age (1 s)
	if d := hitLatency(t, 0, delay); d > delay/3 {
		t.Errorf("with the default readers the hit took %s behind a %s upstream miss", d, delay)
	}
	if d := hitLatency(t, 1, delay); d < delay/2 {
		t.Errorf("with one reader the hit took %s: it should have waited behind the %s miss", d, delay)
	}
}

func TestUDPReadersConfig(t *testing.T) {
	for _, n := range []int{-1, 1025} {
		if _, err := New(Config{UDPReaders: n}); err == nil || !strings.Contains(err.Error(), "UDP readers") {
			t.Errorf("UDPReaders %d: err %v, want a config error", n, err)
		}
	}
}
