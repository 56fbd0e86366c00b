package server

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/cache"
)

// TestDetachAttach moves a serving server's sockets to a second server while a client pipelines
// requests on one connection: every request is answered once, in order, by one server or the
// other; a request half sent at the switch is completed on the second; new connections and UDP
// requests reach the second; the first serves nothing any more.
func TestDetachAttach(t *testing.T) {
	a := startServer(t, Config{})
	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("shutdown b: %v", err)
		}
	})
	// Tell the servers apart by what their stores hold.
	ca := dialText(t, a.tcpAddr)
	if got := ca.roundTrip("set who 0 0 1\r\na\r\n"); got != "STORED\r\n" {
		t.Fatalf("set on a: %q", got)
	}
	if _, err := b.Store().Do("who", func(*cache.Item) (*cache.Item, cache.Op) { return &cache.Item{Value: []byte("b")}, cache.Replace }); err != nil {
		t.Fatal(err)
	}

	// A client sending one get after another, each answered by a or, from some round on, b.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var rounds, switched int
	var loopErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		served := "a"
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = ca.conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(ca.conn, "get who\r\n"); err != nil {
				loopErr = fmt.Errorf("round %d: write: %w", i, err)
				return
			}
			var lines []string
			for len(lines) == 0 || lines[len(lines)-1] != "END\r\n" {
				l, err := ca.r.ReadString('\n')
				if err != nil {
					loopErr = fmt.Errorf("round %d: read: %w (after %q)", i, err, lines)
					return
				}
				lines = append(lines, l)
			}
			who := strings.TrimSpace(lines[1])
			switch {
			case who == served:
			case who == "b" && served == "a":
				served = "b"
				switched = i
			default:
				loopErr = fmt.Errorf("round %d: served by %q after %q", i, who, served)
				return
			}
			rounds++
		}
	}()
	time.Sleep(50 * time.Millisecond)

	// A second connection holds half a request at the switch.
	half := dialText(t, a.tcpAddr)
	if _, err := io.WriteString(half.conn, "set half 0 0 5\r\nab"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sk, err := a.Detach(ctx)
	if err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if len(sk.TCP) != 1 || len(sk.UDP) != 1 || len(sk.Conns) != 2 {
		t.Fatalf("detached %d listeners, %d UDP sockets, %d connections; want 1, 1, 2", len(sk.TCP), len(sk.UDP), len(sk.Conns))
	}
	if tcp, udp := a.Serving(); tcp != 0 || udp != 0 {
		t.Errorf("a serves %d TCP, %d UDP after Detach", tcp, udp)
	}
	time.Sleep(20 * time.Millisecond) // requests queue meanwhile
	errs := make(chan error, 2)
	if err := b.Attach(sk, func(f func() error) { go func() { errs <- f() }() }); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if loopErr != nil {
		t.Fatal(loopErr)
	}
	if switched == 0 {
		t.Fatalf("the pipelining client was never served by b (%d rounds)", rounds)
	}
	t.Logf("%d rounds, switched at %d", rounds, switched)

	if _, err := io.WriteString(half.conn, "cde\r\n"); err != nil {
		t.Fatal(err)
	}
	if got := half.roundTrip("get half\r\n"); got != "STORED\r\nVALUE half 0 5\r\nabcde\r\nEND\r\n" {
		t.Errorf("request completed across the switch: %q", got)
	}
	if it, ok := b.Store().Get("half"); !ok || string(it.Value) != "abcde" {
		t.Errorf("b does not hold the item set across the switch: %v %v", it, ok)
	}
	nc := dialText(t, a.tcpAddr)
	if got := nc.roundTrip("get who\r\n"); got != "VALUE who 0 1\r\nb\r\nEND\r\n" {
		t.Errorf("new connection after the switch: %q", got)
	}
	u := dialUDP(t, a.udpAddr)
	if got, _ := u.roundTrip("get who\r\n"); got != "VALUE who 0 1\r\nb\r\nEND\r\n" {
		t.Errorf("UDP after the switch: %q", got)
	}
	if tcp, udp := b.Serving(); tcp != 1 || udp != 1 {
		t.Errorf("b serves %d TCP, %d UDP", tcp, udp)
	}
	if _, err := a.Detach(ctx); err != ErrDetached {
		t.Errorf("second Detach: %v, want ErrDetached", err)
	}
}

// TestTrackChanges: every kind of change to the store is recorded while tracking, and nothing
// before or after; a flush_all says every key may have changed.
func TestTrackChanges(t *testing.T) {
	ts := startServer(t, Config{})
	c := dialText(t, ts.tcpAddr)
	for _, req := range []string{"set before 0 0 1\r\nx\r\n", "set gone 0 0 1\r\nx\r\n", "set touched 0 0 1\r\nx\r\n", "set counted 0 0 1\r\n1\r\n"} {
		if got := c.roundTrip(req); got != "STORED\r\n" {
			t.Fatalf("%q: %q", req, got)
		}
	}
	stop := ts.TrackChanges()
	for req, want := range map[string]string{
		"set new 0 0 1\r\nx\r\n": "STORED\r\n",
		"delete gone\r\n":        "DELETED\r\n",
		"touch touched 100\r\n":  "TOUCHED\r\n",
		"incr counted 1\r\n":     "2\r\n",
		"get before\r\n":         "VALUE before 0 1\r\nx\r\nEND\r\n", // a read is no change
	} {
		if got := c.roundTrip(req); got != want {
			t.Fatalf("%q: %q, want %q", req, got, want)
		}
	}
	keys, all := stop()
	slices.Sort(keys)
	if want := []string{"counted", "gone", "new", "touched"}; !slices.Equal(keys, want) || all {
		t.Fatalf("changed %v (all %v), want %v", keys, all, want)
	}
	if got := c.roundTrip("set after 0 0 1\r\nx\r\n"); got != "STORED\r\n" {
		t.Fatalf("set after: %q", got)
	}
	if keys, _ := stop(); len(keys) != 4 {
		t.Fatalf("a change after the stop was recorded: %v", keys)
	}
	stop = ts.TrackChanges()
	if got := c.roundTrip("flush_all\r\n"); got != "OK\r\n" {
		t.Fatalf("flush_all: %q", got)
	}
	if _, all := stop(); !all {
		t.Fatal("a flush_all during tracking did not say every key changed")
	}
}
