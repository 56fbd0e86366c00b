package loadgen

import (
	"bufio"
	"bytes"
	"math"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTCP answers every get with a miss and every set with STORED, pipelined in order, stalling
// the stream before every stallEvery-th reply. It counts replies.
func fakeTCP(t *testing.T, stallEvery uint64, stall time.Duration) (addr string, replies *atomic.Uint64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	replies = new(atomic.Uint64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() {
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadBytes('\n')
					if err != nil {
						return
					}
					reply := []byte("END\r\n")
					if bytes.HasPrefix(line, []byte("set ")) {
						f := bytes.Fields(line)
						n := 0
						for _, ch := range f[4] {
							n = n*10 + int(ch-'0')
						}
						if _, err := br.Discard(n + 2); err != nil {
							return
						}
						reply = []byte("STORED\r\n")
					}
					if k := replies.Add(1); stallEvery > 0 && k%stallEvery == 0 {
						time.Sleep(stall)
					}
					if _, err := c.Write(reply); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), replies
}

// accounted checks that every request sent in the window ended in exactly one class, timeout or
// error.
func accounted(t *testing.T, r *Report) {
	t.Helper()
	var n uint64
	for _, c := range Classes {
		n += count(r, c)
	}
	n += r.Timeouts + r.Errors
	sent := math.Round(r.OfferedRate*r.DurationS) - float64(r.Schedule.Unsent)
	if math.Abs(float64(n)-sent) > 0.5 {
		t.Errorf("%d requests accounted for, %.0f sent in the window", n, sent)
	}
}

func TestTCPPipelined(t *testing.T) {
	t.Run("open", func(t *testing.T) { testTCPPipelined(t, 4000) })
	t.Run("closed", func(t *testing.T) { testTCPPipelined(t, 0) })
}

func testTCPPipelined(t *testing.T, rate float64) {
	addr, replies := fakeTCP(t, 0, 0)
	cfg := quick(addr)
	cfg.Proto = "tcp"
	cfg.GetRatio = 0.5
	cfg.Rate = rate
	cfg.Concurrency = 8
	rep := run(t, cfg)
	if rep.Timeouts != 0 || rep.Errors != 0 || count(rep, UserMiss) == 0 || count(rep, Set) == 0 {
		t.Errorf("misses %d, sets %d, timeouts %d, errors %d", count(rep, UserMiss), count(rep, Set), rep.Timeouts, rep.Errors)
	}
	if got := count(rep, UserMiss) + count(rep, Set); got != replies.Load() {
		t.Errorf("%d answers recorded, server sent %d", got, replies.Load())
	}
	accounted(t, rep)
}

// TestTCPTimeouts stalls the stream for 300 ms every 500 replies with a 100 ms timeout: requests
// caught behind a stall are timeouts, their late replies are dropped without shifting the
// matching of later ones (a shift would show as errors: sets answered END).
func TestTCPTimeouts(t *testing.T) {
	addr, _ := fakeTCP(t, 500, 300*time.Millisecond)
	cfg := quick(addr)
	cfg.Proto = "tcp"
	cfg.GetRatio = 0.5
	cfg.Conns = 1
	cfg.Duration = time.Second
	cfg.Timeout = 100 * time.Millisecond
	rep := run(t, cfg)
	if rep.Timeouts == 0 || rep.Errors != 0 {
		t.Errorf("timeouts %d, errors %d", rep.Timeouts, rep.Errors)
	}
	if count(rep, UserMiss) == 0 || count(rep, Set) == 0 {
		t.Errorf("misses %d, sets %d", count(rep, UserMiss), count(rep, Set))
	}
	accounted(t, rep)
}
