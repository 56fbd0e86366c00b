package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// TestCheckLiveCleansUp runs grafana/check-live.sh to its end, and again stopped by SIGTERM and
// by SIGINT while its load runs, and checks that nothing it started remains: no process that was
// in its namespace or descended from it, no process in that namespace at all, and no namespace.
func TestCheckLiveCleansUp(t *testing.T) {
	testenv.RequireRoot(t)
	for _, p := range []string{"ip", "prometheus", "python3"} {
		testenv.LookPath(t, p)
	}
	bin := buildXdpcache(t)

	t.Run("to-the-end", func(t *testing.T) {
		w := startCheckLive(t, bin, "8")
		if err := w.wait(t, 90*time.Second); err != nil {
			t.Errorf("check-live.sh failed: %v\n%s", err, tail(w.out.String(), 3000))
		}
		w.checkClean(t)
	})
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			w := startCheckLive(t, bin, "60")
			w.waitRunning(t, 60*time.Second)
			if err := w.cmd.Process.Signal(sig); err != nil {
				t.Fatalf("signal check-live.sh: %v", err)
			}
			err := w.wait(t, 30*time.Second)
			var exit *exec.ExitError
			if err == nil || !errors.As(err, &exit) {
				t.Errorf("check-live.sh after %v: %v, want a failing exit status", sig, err)
			}
			w.checkClean(t)
		})
	}
}

// checkLive is one run of the script, watched: every process seen in its namespace or below it,
// and the namespace's inode, so that after the script exits the test can tell whether any of them
// survived, even with the namespace's name gone.
type checkLive struct {
	cmd     *exec.Cmd
	out     bytes.Buffer
	ns      string
	done    chan struct{}
	err     error
	seen    map[procID]string // process -> its command line
	nsInode uint64
}

// procID names a process across PID reuse: the PID and its start time in clock ticks.
type procID struct {
	pid   int
	start uint64
}

func startCheckLive(t *testing.T, bin, seconds string) *checkLive {
	t.Helper()
	w := &checkLive{done: make(chan struct{}), seen: map[procID]string{}}
	w.cmd = exec.Command("grafana/check-live.sh", seconds)
	w.cmd.Env = append(os.Environ(), "XDPCACHE_BIN="+bin)
	w.cmd.Stdout, w.cmd.Stderr = &w.out, &w.out
	// Should the test process die, the script gets SIGTERM and cleans up after itself.
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := testenv.StartChild(w.cmd); err != nil {
		t.Fatalf("start check-live.sh: %v", err)
	}
	w.ns = fmt.Sprintf("xdpcache-dash-%d", w.cmd.Process.Pid)
	go func() { w.err = w.cmd.Wait(); close(w.done) }()
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			w.cmd.Process.Kill()
			<-w.done
		}
		w.sweep()
	})
	return w
}

// sweep kills whatever of the script's survived it, so that a failing run leaves nothing behind
// for the next test.
func (w *checkLive) sweep() {
	for id := range w.seen {
		if alive(id) {
			syscall.Kill(id.pid, syscall.SIGKILL)
		}
	}
	for _, p := range allProcs() {
		if w.nsInode != 0 && p.netns == w.nsInode {
			syscall.Kill(p.id.pid, syscall.SIGKILL)
		}
	}
	exec.Command("ip", "netns", "del", w.ns).Run()
}

// watch records what runs in the script's namespace and below the script now.
func (w *checkLive) watch() {
	if w.nsInode == 0 {
		var st syscall.Stat_t
		if syscall.Stat("/run/netns/"+w.ns, &st) == nil {
			w.nsInode = st.Ino
		}
	}
	procs := allProcs()
	below := map[int]bool{w.cmd.Process.Pid: true}
	for changed := true; changed; { // descendants, whatever order /proc lists them in
		changed = false
		for _, p := range procs {
			if below[p.ppid] && !below[p.id.pid] {
				below[p.id.pid], changed = true, true
			}
		}
	}
	for _, p := range procs {
		if p.id.pid != w.cmd.Process.Pid && (below[p.id.pid] || (w.nsInode != 0 && p.netns == w.nsInode)) {
			// The latest command line (a fork execs into its command), but not the empty one of a
			// process that is exiting.
			if p.cmdline != "" || w.seen[p.id] == "" {
				w.seen[p.id] = p.cmdline
			}
		}
	}
}

// waitRunning returns once serve, prometheus and the benches run in the namespace.
func (w *checkLive) waitRunning(t *testing.T, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		w.watch()
		var serve, prom, bench bool
		for id, cmdline := range w.seen {
			if !alive(id) {
				continue
			}
			serve = serve || strings.Contains(cmdline, "xdpcache serve")
			prom = prom || strings.HasPrefix(cmdline, "prometheus ")
			bench = bench || strings.Contains(cmdline, "xdpcache bench")
		}
		if serve && prom && bench {
			return
		}
		select {
		case <-w.done:
			t.Fatalf("check-live.sh exited before its load ran: %v\n%s", w.err, tail(w.out.String(), 3000))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve %v, prometheus %v, bench %v after %v\n%s", serve, prom, bench, limit, tail(w.out.String(), 3000))
		}
	}
}

// wait watches the script until it exits and returns its exit error.
func (w *checkLive) wait(t *testing.T, limit time.Duration) error {
	t.Helper()
	deadline := time.After(limit)
	for {
		w.watch()
		select {
		case <-w.done:
			return w.err
		case <-deadline:
			t.Fatalf("check-live.sh still running after %v\n%s", limit, tail(w.out.String(), 3000))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkClean fails the test if anything the script started outlived it.
func (w *checkLive) checkClean(t *testing.T) {
	t.Helper()
	var serve bool
	for _, cmdline := range w.seen {
		serve = serve || strings.Contains(cmdline, "xdpcache serve")
	}
	if !serve || w.nsInode == 0 {
		t.Fatalf("never saw the script's namespace (%v) or its serve (%v): the check would prove nothing", w.nsInode != 0, serve)
	}
	for id, cmdline := range w.seen {
		if alive(id) {
			t.Errorf("still running after check-live.sh exited: pid %d: %s", id.pid, cmdline)
		}
	}
	for _, p := range allProcs() {
		if p.netns == w.nsInode {
			t.Errorf("still in the script's namespace: pid %d: %s", p.id.pid, p.cmdline)
		}
	}
	if _, err := os.Stat("/run/netns/" + w.ns); err == nil {
		t.Errorf("namespace %s still exists", w.ns)
	}
}

type procInfo struct {
	id      procID
	ppid    int
	netns   uint64
	cmdline string
}

// allProcs reads every process's parent, start time, network namespace and command line from
// /proc. Processes that exit while it reads are left out.
func allProcs() []procInfo {
	ents, _ := os.ReadDir("/proc")
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, start, ok := statOf(pid)
		if !ok {
			continue
		}
		p := procInfo{id: procID{pid, start}, ppid: ppid}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil {
			p.netns = st.Ino
		}
		// argv[0] without its directory, then the arguments: "xdpcache serve -p ..."; empty for a
		// process that is exiting.
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); len(b) > 0 {
			args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
			args[0] = filepath.Base(args[0])
			p.cmdline = strings.Join(args, " ")
		}
		out = append(out, p)
	}
	return out
}

// statOf reads the parent PID and start time of pid from /proc/PID/stat.
func statOf(pid int) (ppid int, start uint64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name, in parentheses, may hold spaces: fields start after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 { // f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime)
		return 0, 0, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	return ppid, start, err1 == nil && err2 == nil
}

// alive reports whether the process still runs (a zombie counts as gone).
func alive(id procID) bool {
	_, start, ok := statOf(id.pid)
	if !ok || start != id.start {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", id.pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
