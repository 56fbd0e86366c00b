package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// Helpers for tests that run the real `xdpcache serve` binary in the server namespace.

const metricsPort = 9150

// newBareRig is the veth pair with XDP_PASS on the client side and no server: the test starts
// `xdpcache serve` itself. Its rig has no kernel and no in-process server.
func newBareRig(t *testing.T) *rig {
	t.Helper()
	pair := newPassPair(t, "xcproc")
	return &rig{pair: pair, addr: netip.AddrPortFrom(netns.ServerIPv4, testPort)}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// xdpcacheBinary builds cmd/xdpcache once per test run, or returns $XDPCACHE_BIN if set (a
// binary built elsewhere, for instance from a clean checkout while the tree is being edited).
func xdpcacheBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("XDPCACHE_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "xdpcache-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "xdpcache")
		out, err := exec.Command("go", "build", "-o", binPath, "../../cmd/xdpcache").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/xdpcache: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// serveProc is a running `xdpcache serve` in the server namespace.
type serveProc struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error // Wait's result, once done is closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServe runs serve on the server veth (native XDP, replies marked, admission always, metrics
// on) plus extra flags, and waits until it answers TCP and the program is attached.
func (r *rig) startServe(t *testing.T, extra ...string) *serveProc {
	t.Helper()
	return startServeIn(t, r.pair.Server, r.pair.ServerIf, r.serveReady, r.serveArgs(extra...)...)
}

// serveArgs are startServe's flags, extra last.
func (r *rig) serveArgs(extra ...string) []string {
	return append([]string{"-l", netns.ServerIPv4.String(), "-p", strconv.Itoa(testPort), "-U", strconv.Itoa(testPort),
		"--xdp-iface", r.pair.ServerIf, "--xdp-mode", "native", "--mark-kernel-replies", strconv.Itoa(testDSCP),
		"--admission", "always", "--metrics-addr", fmt.Sprintf("%s:%d", netns.ServerIPv4, metricsPort),
		"--log-format", "json"}, extra...)
}

// startServeIn runs `xdpcache serve args...` inside ns and waits until ready reports true and, when
// iface is not empty, an XDP program is attached to iface there. The process is killed when the
// test ends, or with the test process.
func startServeIn(t *testing.T, ns *netns.NS, iface string, ready func() bool, args ...string) *serveProc {
	t.Helper()
	p := startInNS(t, ns, func() string { return "" }, xdpcacheBinary(t), append([]string{"serve"}, args...)...)
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("serve exited before it was ready: %v\n%s", p.err, tail(p.log.String(), 4096))
		default:
		}
		if ready() {
			if iface == "" || xdpAttachedIn(t, ns, iface) {
				return p
			}
			// serve runs on without the kernel path when it cannot load or attach it.
			if out := p.log.String(); strings.Contains(out, "kernel path off") {
				t.Fatalf("serve started without the kernel path:\n%s", tail(out, 2048))
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready after 15 s:\n%s", tail(p.log.String(), 4096))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startInNS runs bin with args inside ns, its output kept in the returned process's log. It is
// killed when the test ends, or with the test process; if the test failed, the log and more()
// are printed.
func startInNS(t *testing.T, ns *netns.NS, more func() string, bin string, args ...string) *serveProc {
	t.Helper()
	name := filepath.Base(bin)
	// `ip netns exec` execs the command in place: the PID is the command's own, so Kill reaches it.
	p := &serveProc{cmd: exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...),
		log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := testenv.StartChild(p.cmd); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s%s", name, tail(p.log.String(), 4096), more())
		}
	})
	return p
}

// serveReady reports whether the server answers `version` over TCP from the client namespace.
func (r *rig) serveReady() bool { return serveReadyIn(r.pair.Client, r.addr.String()) }

// serveReadyIn reports whether a server answers `version` over TCP at addr from inside ns.
func serveReadyIn(ns *netns.NS, addr string) bool {
	var ok bool
	_ = ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("version\r\n")); err != nil {
			return err
		}
		l, err := bufio.NewReader(c).ReadString('\n')
		ok = err == nil && strings.HasPrefix(l, "VERSION ")
		return nil
	})
	return ok
}

// xdpAttached reports whether an XDP program is attached to the server veth.
func (r *rig) xdpAttached(t *testing.T) bool {
	t.Helper()
	return xdpAttachedIn(t, r.pair.Server, r.pair.ServerIf)
}

// xdpAttachedIn reports whether an XDP program is attached to iface in ns.
func xdpAttachedIn(t *testing.T, ns *netns.NS, iface string) bool {
	t.Helper()
	var attached bool
	if err := ns.Do(func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		x := l.Attrs().Xdp
		attached = x != nil && (x.Attached || x.ProgId != 0)
		return nil
	}); err != nil {
		t.Fatalf("read %s in %s: %v", iface, ns.Name, err)
	}
	return attached
}

// signal sends sig and waits up to limit for the process to exit.
func (p *serveProc) signal(t *testing.T, sig syscall.Signal, limit time.Duration) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("send %v: %v", sig, err)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(limit):
		t.Fatalf("serve still running %v after %v", limit, sig)
		return nil
	}
}

// rss is the process's resident set in bytes, from /proc/PID/status.
func (p *serveProc) rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", l, err)
			}
			return n << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", p.cmd.Process.Pid)
	return 0
}

// metric scrapes serve's /metrics from the client namespace and returns the unlabelled sample
// of name.
func (r *rig) metric(t *testing.T, name string) float64 {
	t.Helper()
	code, body, err := r.httpGet("/metrics")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /metrics: %d", code)
	}
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	for _, l := range strings.Split(string(body), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("parse %q: %v", l, err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not in the scrape:\n%s", name, tail(string(body), 2048))
	return 0
}

// httpGet fetches path from serve's metrics address, from the client namespace, and returns the
// status code and body.
func (r *rig) httpGet(path string) (code int, body []byte, err error) {
	// A plain HTTP/1.0 request on a connection dialled inside the namespace: http.Transport
	// would dial from another goroutine, outside it.
	err = r.pair.Client.Do(func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", netns.ServerIPv4, metricsPort), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("GET " + path + " HTTP/1.0\r\nHost: metrics\r\n\r\n")); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		code = resp.StatusCode
		body, err = io.ReadAll(resp.Body)
		return err
	})
	return code, body, err
}

// statValue reads one `stats` field over a text connection.
func (c *textClient) stat(t *testing.T, name string) int64 {
	t.Helper()
	_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte("stats\r\n")); err != nil {
		t.Fatalf("stats: %v", err)
	}
	var val int64 = -1
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatalf("read stats: %v", err)
		}
		if l == "END\r\n" {
			break
		}
		if f := strings.Fields(l); len(f) == 3 && f[1] == name {
			val, _ = strconv.ParseInt(f[2], 10, 64)
		}
	}
	if val < 0 {
		t.Fatalf("stats lack %s", name)
	}
	return val
}

// tail is the end of a long log, for failure messages.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// spawnServe starts `xdpcache serve args...` inside ns, killed when the test ends.
func spawnServe(t *testing.T, ns *netns.NS, args ...string) *serveProc {
	t.Helper()
	return startInNS(t, ns, func() string { return "" }, xdpcacheBinary(t), append([]string{"serve"}, args...)...)
}
