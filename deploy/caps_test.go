package deploy

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// TestUnitCapabilitiesExactlyEnough runs `xdpcache serve` as an unprivileged user holding only
// the systemd unit's capabilities (ambient, bounding set, no_new_privs, as the unit grants them),
// inside a private network namespace, and checks that the kernel path comes up; then once more
// without each capability in turn, and checks that it does not. The manifests then grant what
// the program needs, and nothing it could do without.
func TestUnitCapabilitiesExactlyEnough(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.LookPath(t, "setpriv")
	ip := testenv.LookPath(t, "ip")
	var caps []string
	for _, v := range loadUnit(t)["Service"]["AmbientCapabilities"] {
		for _, c := range strings.Fields(v) {
			caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
	}
	if len(caps) == 0 {
		t.Fatal("the unit grants no capabilities")
	}
	bin := buildXdpcache(t)

	ns := fmt.Sprintf("xdpcache-caps-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command(ip, "netns", "del", ns).Run() })
	run("-n", ns, "link", "set", "lo", "up")

	serve := func(t *testing.T, grant []string) (kernelOn bool, logLine string) {
		t.Helper()
		set := "-all"
		for _, c := range grant {
			set += ",+" + c
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, ip, "netns", "exec", ns, setpriv,
			"--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs",
			"--inh-caps="+set, "--ambient-caps="+set, "--bounding-set="+set,
			bin, "serve", "-p", "21977", "-U", "21977", "--xdp-iface", "lo", "--xdp-mode", "generic",
			"--log-format", "json")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start serve: %v", err)
		}
		defer func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}()
		// serve logs the kernel path's fate before it starts serving.
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, `"kernel path on"`):
				return true, line
			case strings.Contains(line, `"kernel path off`):
				return false, line
			case strings.Contains(line, `"serving UDP"`):
				return false, "serving without a kernel path message: " + line
			}
		}
		t.Fatalf("serve exited or timed out before saying whether the kernel path is on: %v", sc.Err())
		return false, ""
	}

	t.Run("all", func(t *testing.T) {
		if on, line := serve(t, caps); !on {
			t.Errorf("kernel path off with the unit's capabilities %v: %.600s", caps, line)
		}
	})
	for i, c := range caps {
		without := append(append([]string{}, caps[:i]...), caps[i+1:]...)
		t.Run("without_"+c, func(t *testing.T) {
			on, line := serve(t, without)
			switch {
			case on:
				t.Errorf("kernel path on without %s: the unit grants a capability it does not need", c)
			case !strings.Contains(line, `"kernel path off`):
				t.Errorf("without %s: no kernel path off message: %.600s", c, line)
			default:
				t.Logf("without %s: %.200s", c, line)
			}
		})
	}
}

// buildXdpcache builds the binary into the test's temporary directory.
func buildXdpcache(t *testing.T) string {
	t.Helper()
	goBin := testenv.LookPath(t, "go")
	bin := filepath.Join(t.TempDir(), "xdpcache")
	if out, err := exec.Command(goBin, "build", "-o", bin, "../cmd/xdpcache").CombinedOutput(); err != nil {
		t.Fatalf("build xdpcache: %v\n%s", err, out)
	}
	// The unprivileged user must be able to reach and run it: open up the directories the test
	// created, below the system's temporary directory (never that directory itself).
	top := filepath.Clean(os.TempDir())
	for d := filepath.Dir(bin); strings.HasPrefix(d, top+string(filepath.Separator)); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", d, err)
		}
	}
	return bin
}
