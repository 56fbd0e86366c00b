package bpf

import (
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/kernelcache"
)

// selfCheckingValue encodes its version and a checksum of itself; its length varies with the
// version so rewrites move between size classes.
func selfCheckingValue(version int) string {
	body := fmt.Sprintf("%010d|%s", version, strings.Repeat(string(rune('a'+version%26)), (version*37)%1100))
	return fmt.Sprintf("%s|%08x", body, crc32.ChecksumIEEE([]byte(body)))
}

// checkValue returns the version of a self-checking value, or an error if it is torn.
func checkValue(v string) (int, error) {
	i := strings.LastIndexByte(v, '|')
	if i < 0 || fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(v[:i]))) != v[i+1:] {
		return 0, fmt.Errorf("torn value %.40q...", v)
	}
	return strconv.Atoi(v[:10])
}

// singleValue splits the kernel's reply to a one-key get or gets into its VALUE line and its value.
func singleValue(frame []byte) (line, value string, err error) {
	p, err := packet.Parse(frame)
	if err != nil {
		return "", "", fmt.Errorf("reply: %w", err)
	}
	// VALUE key flags n [cas]\r\n<value>\r\nEND\r\n
	line, rest, _ := strings.Cut(string(p.Payload[protocol.FrameHeaderLen:]), "\r\n")
	return line, strings.TrimSuffix(rest, "\r\nEND\r\n"), nil
}

// waitAndReport waits for the test's goroutines and fails the test with each error they sent.
func waitAndReport(t *testing.T, wg *sync.WaitGroup, errs chan error) {
	t.Helper()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestConcurrentRewrites: writers rewrite keys through the Cache as the server does (Invalidate,
// then Offer the new item, one writer per key) while readers run the program. Every reply must
// hold whole values, and never a version older than one whose Invalidate had returned before the
// read began.
func TestConcurrentRewrites(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 4096, MaxBytes: 16 << 20})
	const keys = 8
	var staleBelow [keys]atomic.Int64 // versions below this were invalidated before now
	deadline := time.Now().Add(800 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	var hits, reads atomic.Int64

	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for v := 1; v < 20000 && time.Now().Before(deadline); v++ {
				k := w*keys/2 + v%(keys/2)
				key := fmt.Sprintf("key%d", k)
				if err := c.Invalidate(key); err != nil {
					errs <- err
					return
				}
				staleBelow[k].Store(int64(v))
				if err := c.Offer(kernelcache.Item{Key: key, Value: []byte(selfCheckingValue(v)), CAS: uint64(v)}); err != nil {
					errs <- err
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
		}(w)
	}
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
				k := (i + r) % keys
				floor := staleBelow[k].Load()
				req := request(keysCommand("get", fmt.Sprintf("key%d", k)))
				verdict, out := run(t, c.Program(), req.Bytes())
				reads.Add(1)
				if verdict != xdpTX {
					continue
				}
				hits.Add(1)
				_, value, err := singleValue(out)
				if err != nil {
					errs <- err
					return
				}
				ver, err := checkValue(value)
				if err != nil {
					errs <- err
					return
				}
				if int64(ver) < floor {
					errs <- fmt.Errorf("key%d: served version %d after version %d was invalidated", k, ver, floor)
					return
				}
			}
		}(r)
	}
	waitAndReport(t, &wg, errs)
	t.Logf("%d reads, %d answered in the kernel", reads.Load(), hits.Load())
	if hits.Load() < 100 {
		t.Fatalf("only %d kernel answers: the test did not exercise concurrent reads", hits.Load())
	}
}

// TestConcurrentMoves: a cache far smaller than its key set, so that fills keep evicting and
// moving entries between their two index slots, while readers run the program. Every answer must
// be the requested key's own whole value, never older than one whose Invalidate had returned
// before the read began.
func TestConcurrentMoves(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 256, MaxBytes: 64 << 20, Admission: AdmitAlways})
	const keys = 1024
	var staleBelow [keys]atomic.Int64
	deadline := time.Now().Add(800 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	var hits atomic.Int64

	wg.Add(1)
	go func() {
		defer wg.Done()
		for v := 1; v < 200000 && time.Now().Before(deadline); v++ {
			k := (v * 7919) % keys
			key := fmt.Sprintf("m%d", k)
			if v%5 == 0 { // a write: the old version goes first
				if err := c.Invalidate(key); err != nil {
					errs <- err
					return
				}
				staleBelow[k].Store(int64(v))
			}
			value := key + "|" + selfCheckingValue(v%300)
			if err := c.Offer(kernelcache.Item{Key: key, Value: []byte(value), CAS: uint64(v)}); err != nil {
				errs <- err
				return
			}
		}
	}()
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
				k := (i*31 + r) % keys
				key := fmt.Sprintf("m%d", k)
				floor := staleBelow[k].Load()
				verdict, out := run(t, c.Program(), request(keysCommand("gets", key)).Bytes())
				if verdict != xdpTX {
					continue
				}
				hits.Add(1)
				line, value, err := singleValue(out) // VALUE key 0 <n> <cas>
				if err != nil {
					errs <- err
					return
				}
				f := strings.Fields(line)
				if len(f) != 5 || f[1] != key || !strings.HasPrefix(value, key+"|") {
					errs <- fmt.Errorf("get %s answered %q / %.40q", key, line, value)
					return
				}
				if _, err := checkValue(value[len(key)+1:]); err != nil {
					errs <- err
					return
				}
				if cas, _ := strconv.ParseInt(f[4], 10, 64); cas < floor {
					errs <- fmt.Errorf("%s: served version %d after version %d was invalidated", key, cas, floor)
					return
				}
			}
		}(r)
	}
	waitAndReport(t, &wg, errs)
	ch := c.Churn()
	t.Logf("%d kernel answers; churn %+v", hits.Load(), ch)
	if hits.Load() < 100 || ch.Moved == 0 || ch.EvictedSpace == 0 {
		t.Fatalf("%d answers, churn %+v: the test did not exercise reads during moves and evictions", hits.Load(), ch)
	}
}
