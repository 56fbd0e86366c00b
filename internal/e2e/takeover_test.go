package e2e

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/internal/testenv"
)

// takeoverKeys is how many keys the load reads; all are set before it starts.
const takeoverKeys = 200

const window = 100 * time.Millisecond

// udpLoad sends UDP gets at a fixed rate whatever the replies do (open loop) and records, per
// 100 ms window of send time, requests, hits and kernel-marked replies.
type udpLoad struct {
	conn  *net.UDPConn
	start time.Time
	mu    sync.Mutex
	sent  map[uint16]time.Time // outstanding, by request id
	wins  []udpWindow
	bad   []string // malformed or unexpected replies
}

type udpWindow struct{ sent, answered, hits, kernel int }

func (l *udpLoad) win(at time.Time) *udpWindow {
	i := int(at.Sub(l.start) / window)
	for len(l.wins) <= i {
		l.wins = append(l.wins, udpWindow{})
	}
	return &l.wins[i]
}

// run sends every interval until stop, while a reader takes the replies.
func (l *udpLoad) run(interval time.Duration, stop <-chan struct{}, done *sync.WaitGroup) {
	done.Add(2)
	go func() {
		defer done.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		var id uint16
		next := time.Now()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
			id++
			k := fmt.Sprintf("to:%d", rng.IntN(takeoverKeys))
			now := time.Now()
			l.mu.Lock()
			l.sent[id] = now
			l.win(now).sent++
			l.mu.Unlock()
			msg := protocol.FrameHeader{RequestID: id, Total: 1}.AppendTo(nil)
			if _, err := l.conn.Write(append(msg, "get "+k+"\r\n"...)); err != nil {
				l.mu.Lock()
				l.bad = append(l.bad, "send: "+err.Error())
				l.mu.Unlock()
			}
		}
	}()
	go func() {
		defer done.Done()
		buf, oob := make([]byte, 4096), make([]byte, 128)
		for {
			_ = l.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, oobn, _, _, err := l.conn.ReadMsgUDP(buf, oob)
			if err != nil {
				select {
				case <-stop:
					l.mu.Lock()
					pending := len(l.sent)
					l.mu.Unlock()
					if pending == 0 {
						return
					}
				default:
				}
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					// Give stragglers two seconds past the stop, then count them as timeouts.
					select {
					case <-stop:
						if time.Since(l.lastSend()) > 2*time.Second {
							return
						}
					default:
					}
					continue
				}
				l.mu.Lock()
				l.bad = append(l.bad, "read: "+err.Error())
				l.mu.Unlock()
				return
			}
			h, err := protocol.ParseFrameHeader(buf[:n])
			payload := string(buf[protocol.FrameHeaderLen:n])
			dscp, _ := dscpOf(oob[:oobn])
			l.mu.Lock()
			at, ok := l.sent[h.RequestID]
			switch {
			case err != nil || h.Total != 1:
				l.bad = append(l.bad, fmt.Sprintf("reply frame %+v %v", h, err))
			case !ok:
				l.bad = append(l.bad, fmt.Sprintf("reply to request %d not outstanding", h.RequestID))
			case strings.HasPrefix(payload, "VALUE to:") && strings.HasSuffix(payload, "\r\nEND\r\n"):
				delete(l.sent, h.RequestID)
				w := l.win(at)
				w.answered++
				w.hits++
				if dscp == testDSCP {
					w.kernel++
				}
			case payload == "END\r\n":
				delete(l.sent, h.RequestID)
				l.win(at).answered++
			default:
				l.bad = append(l.bad, fmt.Sprintf("reply %q", payload))
			}
			l.mu.Unlock()
		}
	}()
}

func (l *udpLoad) lastSend() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var last time.Time
	for _, at := range l.sent {
		if at.After(last) {
			last = at
		}
	}
	return last
}

// tcpLoad pipelines gets and sets on one connection at a fixed rate: a writer sends on schedule,
// a reader checks the replies in order.
type tcpLoad struct {
	conn     net.Conn
	mu       sync.Mutex
	expect   []string // "get" or "set", in send order
	answered atomic.Int64
	bad      []string
}

func (l *tcpLoad) run(interval time.Duration, stop <-chan struct{}, done *sync.WaitGroup) {
	done.Add(2)
	sendsDone := make(chan struct{})
	go func() {
		defer done.Done()
		defer close(sendsDone)
		rng := rand.New(rand.NewPCG(3, 4))
		w := bufio.NewWriter(l.conn)
		next := time.Now()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
			k := fmt.Sprintf("to:%d", rng.IntN(takeoverKeys))
			var req, kind string
			if i%10 == 0 {
				req, kind = fmt.Sprintf("set %s 0 0 6\r\nvalue%d\r\n", k, i%10), "set"
			} else {
				req, kind = "get "+k+"\r\n", "get"
			}
			l.mu.Lock()
			l.expect = append(l.expect, kind)
			l.mu.Unlock()
			_ = l.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(w, req); err == nil {
				err = w.Flush()
				if err != nil {
					l.fail("write: " + err.Error())
					return
				}
			}
		}
	}()
	go func() {
		defer done.Done()
		r := bufio.NewReader(l.conn)
		for {
			l.mu.Lock()
			n := len(l.expect)
			l.mu.Unlock()
			if n == 0 {
				select {
				case <-sendsDone:
					return
				default:
					time.Sleep(time.Millisecond)
					continue
				}
			}
			_ = l.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			line, err := r.ReadString('\n')
			if err != nil {
				l.fail(fmt.Sprintf("read (%d outstanding): %v", n, err))
				return
			}
			l.mu.Lock()
			kind := l.expect[0]
			l.expect = l.expect[1:]
			l.mu.Unlock()
			switch {
			case kind == "set" && line == "STORED\r\n":
			case kind == "get" && line == "END\r\n":
			case kind == "get" && strings.HasPrefix(line, "VALUE to:"):
				v, err1 := r.ReadString('\n')
				end, err2 := r.ReadString('\n')
				if err1 != nil || err2 != nil || !strings.HasPrefix(v, "value") || end != "END\r\n" {
					l.fail(fmt.Sprintf("get reply %q %q %q", line, v, end))
					return
				}
			default:
				l.fail(fmt.Sprintf("%s reply %q", kind, line))
				return
			}
			l.answered.Add(1)
		}
	}()
}

func (l *tcpLoad) fail(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bad = append(l.bad, s)
}

// TestTakeoverUnderLoad upgrades a serve in place under open-loop UDP and TCP load: serve
// --takeover takes the sockets, the connections, the kernel path and the items; the old process
// exits. No request times out or errs, the kernel answers in every 100 ms window throughout,
// and the hit ratio and kernel share after the switch are those before it. Then kill -9 of the
// new process leaves no program attached and nothing of ours running.
func TestTakeoverUnderLoad(t *testing.T) {
	testenv.RequireRoot(t)
	r := newBareRig(t)
	old := r.startServe(t)
	ctl := r.dialText(t)
	for i := range takeoverKeys {
		if got, err := ctl.line(fmt.Sprintf("set to:%d 5 0 6\r\nvalue%d\r\n", i, i%10)); err != nil || got != "STORED" {
			t.Fatalf("set: %q %v", got, err)
		}
	}
	g := r.udpGetter(t, time.Second)
	for i := range takeoverKeys {
		for range 2 { // the first hit fills the kernel (admission always), the second shows it
			if _, _, err := g.do(fmt.Sprintf("get to:%d\r\n", i)); err != nil {
				t.Fatalf("warm get: %v", err)
			}
		}
	}

	uc := r.udpGetter(t, time.Second).conn
	ul := &udpLoad{conn: uc, start: time.Now(), sent: map[uint16]time.Time{}}
	tl := &tcpLoad{conn: r.dialText(t).conn}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	ul.run(time.Millisecond, stop, &wg)   // 1000 UDP gets/s
	tl.run(2*time.Millisecond, stop, &wg) // 500 TCP requests/s, one in ten a set
	time.Sleep(1500 * time.Millisecond)

	// The upgrade: same flags plus --takeover.
	switchStart := time.Now()
	next := r.startTakeover(t, old)
	switched := time.Now()
	t.Logf("old serve exited %v after the new one started", switched.Sub(switchStart))
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Every request answered, none in error.
	ul.mu.Lock()
	defer ul.mu.Unlock()
	if len(ul.sent) > 0 || len(ul.bad) > 0 {
		t.Errorf("UDP: %d requests unanswered, errors %q", len(ul.sent), ul.bad)
	}
	tl.mu.Lock()
	if len(tl.expect) > 0 || len(tl.bad) > 0 {
		t.Errorf("TCP: %d requests unanswered, errors %q", len(tl.expect), tl.bad)
	}
	tl.mu.Unlock()
	// The kernel answered in every window, through the switch.
	var before, after udpWindow
	for i, w := range ul.wins {
		at := ul.start.Add(time.Duration(i) * window)
		if w.sent == 0 {
			continue
		}
		if w.kernel == 0 {
			t.Errorf("window %d (%v after the load started, switch at %v..%v): %d requests, no kernel answer",
				i, at.Sub(ul.start), switchStart.Sub(ul.start), switched.Sub(ul.start), w.sent)
		}
		switch {
		case at.Before(switchStart):
			before.sent, before.hits, before.kernel = before.sent+w.sent, before.hits+w.hits, before.kernel+w.kernel
		case at.After(switched):
			after.sent, after.hits, after.kernel = after.sent+w.sent, after.hits+w.hits, after.kernel+w.kernel
		}
	}
	hr := func(w udpWindow) float64 { return float64(w.hits) / float64(max(w.sent, 1)) }
	ks := func(w udpWindow) float64 { return float64(w.kernel) / float64(max(w.sent, 1)) }
	t.Logf("before the switch: %d gets, hit ratio %.3f, kernel share %.3f; after: %d gets, hit ratio %.3f, kernel share %.3f; TCP answered %d",
		before.sent, hr(before), ks(before), after.sent, hr(after), ks(after), tl.answered.Load())
	if before.sent == 0 || after.sent == 0 || hr(after) < 0.98*hr(before) || ks(after) < 0.98*ks(before) {
		t.Errorf("hit ratio %.3f -> %.3f, kernel share %.3f -> %.3f: want at least 0.98x", hr(before), hr(after), ks(before), ks(after))
	}

	// The new process is ready, attached, and holds the items.
	if code, body, err := r.httpGet("/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("readyz after the takeover: %d %q %v", code, body, err)
	}
	if !r.xdpAttached(t) {
		t.Fatal("no XDP program attached after the takeover")
	}
	c2 := r.dialText(t)
	// Flags 5 as first set, or 0 if the load's sets rewrote it.
	if got, err := c2.line("get to:7\r\n"); err != nil || (got != "VALUE to:7 5 6" && got != "VALUE to:7 0 6") {
		t.Errorf("get after the takeover: %q %v", got, err)
	}

	// kill -9 of the new process: the old one is gone, so nothing may stay attached.
	if err := next.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-next.done
	if r.xdpAttached(t) {
		t.Fatal("an XDP program is still attached after kill -9 of the process that took over")
	}
	if err := syscall.Kill(old.cmd.Process.Pid, 0); err != unix.ESRCH {
		t.Errorf("the old serve (pid %d) still exists: %v", old.cmd.Process.Pid, err)
	}
}

// TestTakeoverOnSIGHUP: SIGHUP makes serve start its own successor (the binary at its path, the
// same flags plus --takeover), which takes over; the old process exits 0 and the successor
// serves the items and the kernel path.
func TestTakeoverOnSIGHUP(t *testing.T) {
	testenv.RequireRoot(t)
	r := newBareRig(t)
	// Output to a file: the successor inherits it, and a pipe would keep Wait waiting for it.
	logf, err := os.CreateTemp(t.TempDir(), "serve-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"netns", "exec", r.pair.Server.Name, xdpcacheBinary(t), "serve"}, r.serveArgs()...)
	old := exec.Command("ip", args...)
	old.Stdout, old.Stderr = logf, logf
	if err := testenv.StartChild(old); err != nil {
		t.Fatal(err)
	}
	oldDone := make(chan error, 1)
	go func() { oldDone <- old.Wait() }()
	var successor int
	t.Cleanup(func() {
		old.Process.Kill()
		if successor != 0 {
			// Not our child (the old serve started it): kill it by pid, and wait until it is gone.
			syscall.Kill(successor, syscall.SIGKILL)
			for range 100 {
				if syscall.Kill(successor, 0) == unix.ESRCH {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("serve output:\n%s", tail(string(b), 4096))
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !r.serveReady() || !r.xdpAttached(t) {
		if time.Now().After(deadline) {
			t.Fatal("serve not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctl := r.dialText(t)
	if got, err := ctl.line("set hup 3 0 2\r\nhi\r\n"); err != nil || got != "STORED" {
		t.Fatalf("set: %q %v", got, err)
	}
	if err := old.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-oldDone:
		if err != nil {
			t.Fatalf("the old serve exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the old serve still runs 30 s after SIGHUP")
	}
	b, _ := os.ReadFile(logf.Name())
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, `"msg":"handed over: the new process serves","pid":`); i >= 0 {
			fmt.Sscanf(l[i+len(`"msg":"handed over: the new process serves","pid":`):], "%d", &successor)
		}
	}
	if successor == 0 {
		t.Fatalf("no successor pid in the log:\n%s", tail(string(b), 2048))
	}
	if syscall.Kill(successor, 0) != nil {
		t.Fatalf("the successor %d does not run", successor)
	}
	// The open connection is the successor's now, and it has the item.
	if got, err := ctl.line("get hup\r\n"); err != nil || got != "VALUE hup 3 2" {
		t.Errorf("get after the SIGHUP takeover: %q %v", got, err)
	}
	if !r.xdpAttached(t) {
		t.Error("no XDP program attached after the SIGHUP takeover")
	}
}

// startTakeover starts `serve --takeover` with r's flags and waits until old has exited 0.
func (r *rig) startTakeover(t *testing.T, old *serveProc) *serveProc {
	t.Helper()
	next := spawnServe(t, r.pair.Server, r.serveArgs("--takeover")...)
	select {
	case <-old.done:
		if old.err != nil {
			t.Fatalf("the old serve exited with %v:\n%s", old.err, tail(old.log.String(), 2048))
		}
	case <-next.done:
		t.Fatalf("serve --takeover exited: %v\n%s", next.err, tail(next.log.String(), 4096))
	case <-time.After(30 * time.Second):
		t.Fatalf("the old serve still runs 30 s after serve --takeover started")
	}
	return next
}

// TestLinearizableAcrossTakeover records the linearizability workload (UDP reads answered by the
// kernel or the server, TCP writes, cas, incr, deletes on a few keys) while serve is upgraded
// in place twice: every reply must fit one sequential memcached, so no write racing a switch
// is lost or served stale, by the kernel or by either server.
func TestLinearizableAcrossTakeover(t *testing.T) {
	testenv.RequireRoot(t)
	r := newBareRig(t)
	p := r.startServe(t)
	type recorded struct {
		h  []porcupine.Operation
		st linStats
	}
	done := make(chan recorded, 1)
	want := linOps(t, 80_000)
	go func() {
		h, st := recordHistory(t, r, want, 40*time.Second)
		done <- recorded{h, st}
	}()
	time.Sleep(300 * time.Millisecond)
	p = r.startTakeover(t, p)
	time.Sleep(300 * time.Millisecond)
	r.startTakeover(t, p)
	select {
	case <-done:
		t.Fatal("the history was complete before the second takeover: raise XDPCACHE_LIN_OPS")
	default:
	}
	rec := <-done
	st := rec.st
	t.Logf("%d operations: %d UDP reads (%d answered by the kernel, %d lost), %d TCP operations",
		len(rec.h), st.udpReads, st.kernelReads, st.udpTimeouts, st.tcpOps)
	if len(rec.h) < want*9/10 {
		t.Fatalf("recorded %d operations, want at least %d", len(rec.h), want*9/10)
	}
	if st.kernelReads < st.udpReads/10 {
		t.Fatalf("the kernel answered %d of %d UDP reads: too few to test the kernel path", st.kernelReads, st.udpReads)
	}
	if res := checkHistory(t, rec.h); res != porcupine.Ok {
		t.Fatalf("history of %d operations across two takeovers is %s, want Ok", len(rec.h), res)
	}
}
