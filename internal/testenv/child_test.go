package testenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// childHelperEnv makes the test binary act as a test process that starts a child and then waits
// to be killed.
const childHelperEnv = "TESTENV_CHILD_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(childHelperEnv) == "1" {
		childHelper()
		return
	}
	os.Exit(m.Run())
}

// childHelper starts `sleep 60` with StartChild, then throws away OS threads as netns.Do does
// (locked goroutines that exit), prints the child's PID and blocks.
func childHelper() {
	cmd := exec.Command("sleep", "60")
	if err := StartChild(cmd); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		}()
	}
	wg.Wait()
	fmt.Println("child", cmd.Process.Pid)
	select {}
}

// TestStartChildDiesWithParent: a child started with StartChild survives the test process
// discarding threads (on kernels and Go versions where a locked goroutine's exit ends its thread)
// and dies when the test process is killed with SIGKILL, when no cleanup runs.
func TestStartChildDiesWithParent(t *testing.T) {
	LookPath(t, "sleep")
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), childHelperEnv+"=1")
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { helper.Process.Kill(); helper.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 2 || f[0] != "child" {
		t.Fatalf("helper said %q, %v", line, err)
	}
	pid, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGKILL) // should the check fail

	time.Sleep(200 * time.Millisecond) // a parent-death signal from a discarded thread lands at once
	if !running(pid) {
		t.Fatalf("child %d died while its parent ran: it was forked from a thread that was thrown away", pid)
	}
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for running(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d still running 5 s after its parent was killed", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}
