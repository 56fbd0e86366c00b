package server

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/cache"
)

// BenchmarkUpstreamGet compares one TCP get of a 100-byte value, one request at a time:
// answered from the near cache, fetched from the upstream through us, and sent to that memcached
// directly. The ratios are what the near cache saves and what fronting costs on a miss.
//
//	go test ./server -run '^$' -bench UpstreamGet -benchtime 20000x
func BenchmarkUpstreamGet(b *testing.B) {
	m := startUpstream(b)
	s := startServer(b, Config{Upstreams: []string{m.Addr}, KernelMaxAge: time.Hour})
	value := make([]byte, 100)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	set := fmt.Sprintf("set bk 0 0 %d\r\n%s\r\n", len(value), value)
	want := fmt.Sprintf("VALUE bk 0 %d\r\n%s\r\nEND\r\n", len(value), value)
	through := dialText(b, s.tcpAddr)
	if got := through.roundTrip(set); got != "STORED\r\n" {
		b.Fatalf("set: %q", got)
	}
	drop := func() {
		_, _ = s.Store().Do("bk", func(*cache.Item) (*cache.Item, cache.Op) { return nil, cache.Delete })
	}
	run := func(b *testing.B, c *textClient, before func()) {
		buf := make([]byte, len(want))
		for b.Loop() {
			if before != nil {
				before()
			}
			if _, err := io.WriteString(c.conn, "get bk\r\n"); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c.r, buf); err != nil || string(buf) != want {
				b.Fatalf("get: %q, %v", buf, err)
			}
		}
	}
	b.Run("near-hit", func(b *testing.B) {
		through.roundTrip("get bk\r\n")
		run(b, through, nil)
	})
	b.Run("fetch", func(b *testing.B) { run(b, through, drop) })
	b.Run("memcached-direct", func(b *testing.B) { run(b, dialText(b, m.Addr), nil) })
}
