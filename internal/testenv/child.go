package testenv

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"go.uber.org/goleak"
)

// StartChild starts cmd so that it does not outlive the test process, however that ends (a test
// timeout's panic, kill -9): the kernel sends the child its parent-death signal, SIGKILL unless
// cmd.SysProcAttr sets another (a script that cleans up on SIGTERM wants SIGTERM). `ip netns exec`
// keeps the signal across the exec.
//
// The parent-death signal follows the thread that forked the child, not the process, and tests
// throw threads away (netns.Do exits its thread while locked): a child forked from such a thread
// would be killed when that thread goes. So every child is forked from one OS thread that stays
// locked, and alive, for the life of the process.
func StartChild(cmd *exec.Cmd) error {
	spawnOnce.Do(func() { go spawner() })
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	errc := make(chan error, 1)
	spawnq <- func() { errc <- cmd.Start() }
	return <-errc
}

var (
	spawnOnce sync.Once
	spawnq    = make(chan func())
)

// spawner runs forever on its locked thread; IgnoreSpawner tells goleak so.
func spawner() {
	runtime.LockOSThread()
	for f := range spawnq {
		f()
	}
}

// IgnoreSpawner is the goleak option for packages whose tests call StartChild: its forking
// goroutine lives as long as the process, on purpose.
func IgnoreSpawner() goleak.Option {
	return goleak.IgnoreTopFunction("github.com/xdpcache/xdpcache/internal/testenv.spawner")
}

// IgnoreStoreClock is the goleak option for packages whose tests create an item store: the
// store's clock ticks in a goroutine that lives as long as the process, on purpose.
func IgnoreStoreClock() goleak.Option {
	return goleak.IgnoreTopFunction("github.com/xdpcache/xdpcache/cache.tickClock")
}
