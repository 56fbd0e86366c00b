package takeover

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/server"
)

// node is a server serving a TCP and a UDP socket on loopback.
type node struct {
	srv     *server.Server
	tcpAddr string
	udpAddr string
	errs    chan error
}

func startNode(t *testing.T) *node {
	t.Helper()
	n := startNodeB(t)
	t.Cleanup(func() { n.stop(t) })
	return n
}

// startNodeB starts a node the caller stops (shutdown).
func startNodeB(t testing.TB) *node {
	t.Helper()
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: ln.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{srv: srv, tcpAddr: ln.Addr().String(), udpAddr: uc.LocalAddr().String(), errs: make(chan error, 16)}
	n.run(func() error { return srv.ServeTCP(ln) })
	n.run(func() error { return srv.ServeUDP(uc) })
	return n
}

func newNode(t *testing.T) *node {
	t.Helper()
	n := newNodeB(t)
	t.Cleanup(func() { n.stop(t) })
	return n
}

// newNodeB makes a node serving nothing yet, which the caller stops (shutdown).
func newNodeB(t testing.TB) *node {
	t.Helper()
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return &node{srv: srv, errs: make(chan error, 16)}
}

func (n *node) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.srv.Shutdown(ctx)
}

func (n *node) run(f func() error) {
	go func() {
		if err := f(); err != nil {
			n.errs <- err
		}
	}()
}

func (n *node) stop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	select {
	case err := <-n.errs:
		if !errors.Is(err, server.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	default:
	}
}

func identity(n *node) Identity { return identityB(n) }

func identityB(n *node) Identity {
	_, p, _ := net.SplitHostPort(n.tcpAddr)
	port, _ := strconv.Atoi(p)
	return Identity{Listen: "127.0.0.1", TCPPort: port, UDPPort: port}
}

type lineConn struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{c, bufio.NewReader(c)}
}

// ask sends req and reads lines until one of the ends.
func (l *lineConn) ask(req string, ends ...string) (string, error) {
	_ = l.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(l.c, req); err != nil {
		return "", err
	}
	var out strings.Builder
	for {
		line, err := l.r.ReadString('\n')
		out.WriteString(line)
		if err != nil {
			return out.String(), err
		}
		for _, e := range ends {
			if line == e {
				return out.String(), nil
			}
		}
	}
}

func socketPath(t *testing.T) string {
	return fmt.Sprintf("@xdpcache-test-%d-%s", time.Now().UnixNano(), strings.ReplaceAll(t.Name(), "/", "-"))
}

// TestTakeover moves a server without a kernel path to a second one: items keep value, flags,
// expiry, CAS and access state, least recently used first; a connection open across the switch
// keeps working; CAS uniques issued afterwards are above every moved one; the old Serve
// returns what it handed over.
func TestTakeover(t *testing.T) {
	old := startNode(t)
	c := dial(t, old.tcpAddr)
	exp := time.Now().Add(time.Hour).Unix()
	for i := range 50 {
		req := fmt.Sprintf("set k%d %d %d 2\r\nv%d\r\n", i, i, exp, i%10)
		if got, err := c.ask(req, "STORED\r\n"); err != nil {
			t.Fatalf("set: %q %v", got, err)
		}
	}
	// k0's CAS, to use after the switch.
	got, err := c.ask("gets k0\r\n", "END\r\n")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(got, "\r\n", 2)[0])
	casK0, _ := strconv.ParseUint(f[4], 10, 64)
	before := map[string]cache.Item{}
	for i := range 50 {
		k := fmt.Sprintf("k%d", i)
		it, ok := old.srv.Store().Get(k)
		if !ok {
			t.Fatalf("%s missing before", k)
		}
		// Get showed the access state from before it; it recorded a fetch.
		it.Fetched = true
		before[k] = it
	}

	path := socketPath(t)
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type served struct {
		h   *Handed
		err error
	}
	handed := make(chan served, 1)
	var failures []error
	var mu sync.Mutex
	go func() {
		h, err := l.Serve(context.Background(), Giver{Server: old.srv, Identity: identity(old)}, func(err error) {
			mu.Lock()
			failures = append(failures, err)
			mu.Unlock()
		})
		handed <- served{h, err}
	}()

	next := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tk, err := Take(ctx, path, Taker{Server: next.srv, Identity: identity(old), Run: next.run})
	if err != nil {
		t.Fatalf("Take: %v", err)
	}
	s := <-handed
	if s.err != nil {
		t.Fatalf("Serve: %v (failures %v)", s.err, failures)
	}
	if tk.Items != 50 || s.h.Items != 50 || tk.Conns != 1 || s.h.Conns != 1 {
		t.Errorf("moved %d/%d items and %d/%d connections, want 50 and 1", tk.Items, s.h.Items, tk.Conns, s.h.Conns)
	}
	for k, want := range before {
		got, ok := next.srv.Store().Get(k)
		if !ok {
			t.Errorf("%s not moved", k)
			continue
		}
		if string(got.Value) != string(want.Value) || got.Flags != want.Flags || got.Exptime != want.Exptime ||
			got.CAS != want.CAS || got.LastAccess < want.LastAccess || got.LastAccess > want.LastAccess+1 || got.Fetched != want.Fetched {
			t.Errorf("%s moved as %+v, was %+v", k, got, want)
		}
	}
	// The open connection is now served by next: a cas with the moved unique succeeds, and the
	// new unique is above every moved one.
	if got, err := c.ask(fmt.Sprintf("cas k0 0 0 1 %d\r\nx\r\n", casK0), "STORED\r\n", "EXISTS\r\n", "NOT_FOUND\r\n"); err != nil || got != "STORED\r\n" {
		t.Fatalf("cas with the moved unique: %q %v", got, err)
	}
	it, _ := next.srv.Store().Get("k0")
	for k, b := range before {
		if it.CAS <= b.CAS {
			t.Errorf("new CAS %d not above moved %s's %d", it.CAS, k, b.CAS)
		}
	}
	// The Serve calls run in goroutines Take started: wait for them to register (bounded).
	tcp, udp := next.srv.Serving()
	for deadline := time.Now().Add(2 * time.Second); (tcp != 1 || udp != 1) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		tcp, udp = next.srv.Serving()
	}
	if tcp != 1 || udp != 1 {
		t.Errorf("next serves %d TCP, %d UDP", tcp, udp)
	}
	if tcp, udp := old.srv.Serving(); tcp != 0 || udp != 0 {
		t.Errorf("old still serves %d TCP, %d UDP", tcp, udp)
	}
	if got, err := dial(t, old.tcpAddr).ask("get k1\r\n", "END\r\n"); err != nil || got != "VALUE k1 1 2\r\nv1\r\nEND\r\n" {
		t.Errorf("new connection: %q %v", got, err)
	}
}

// TestTakeoverRefusedOrFailedKeepsServing: a process with other ports is refused before anything
// moves; a process that fails after everything moved, before the commit, serves nothing, and the
// old server serves on, open connections included.
func TestTakeoverRefusedOrFailedKeepsServing(t *testing.T) {
	old := startNode(t)
	c := dial(t, old.tcpAddr)
	if got, err := c.ask("set a 0 0 1\r\n1\r\n", "STORED\r\n"); err != nil {
		t.Fatalf("set: %q %v", got, err)
	}
	path := socketPath(t)
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	failures := make(chan error, 4)
	served := make(chan error, 1)
	go func() {
		_, err := l.Serve(ctx, Giver{Server: old.srv, Identity: identity(old)}, func(err error) { failures <- err })
		served <- err
	}()

	other := identity(old)
	other.TCPPort++
	next := newNode(t)
	tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer tcancel()
	if _, err := Take(tctx, path, Taker{Server: next.srv, Identity: other, Run: next.run}); err == nil || !strings.Contains(err.Error(), "refused: different sockets") {
		t.Fatalf("Take with other ports: %v, want a refusal", err)
	}
	if err := <-failures; !strings.Contains(err.Error(), "different sockets") {
		t.Errorf("old side's failure: %v", err)
	}

	failing := newNode(t)
	if _, err := Take(tctx, path, Taker{Server: failing.srv, Identity: identity(old), Run: failing.run,
		Ready: func() error { return errors.New("injected failure") }}); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Take that fails once everything moved: %v", err)
	}
	if tcp, udp := failing.srv.Serving(); tcp != 0 || udp != 0 {
		t.Errorf("the process whose takeover failed serves %d TCP, %d UDP", tcp, udp)
	}
	if err := <-failures; !strings.Contains(err.Error(), "failed") {
		t.Errorf("old side's failure: %v", err)
	}
	if got, err := c.ask("get a\r\n", "END\r\n"); err != nil || got != "VALUE a 0 1\r\n1\r\nEND\r\n" {
		t.Errorf("open connection after a failed takeover: %q %v", got, err)
	}
	if got, err := dial(t, old.tcpAddr).ask("get a\r\n", "END\r\n"); err != nil || got != "VALUE a 0 1\r\n1\r\nEND\r\n" {
		t.Errorf("new connection after a failed takeover: %q %v", got, err)
	}
	if tcp, udp := old.srv.Serving(); tcp != 1 || udp != 1 {
		t.Errorf("old serves %d TCP, %d UDP after a failed takeover", tcp, udp)
	}
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Errorf("Serve after cancel: %v", err)
	}
}
