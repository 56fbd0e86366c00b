// Package testenv decides whether tests that need privileges or external programs can run here.
//
// Under CI=true every requirement is mandatory: a missing one fails the test loudly, because CI runs
// as root on a kernel with BPF and has installed every program the tests use. Elsewhere a missing
// requirement skips the test with the reason.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable fails the test under CI and skips it elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("required under CI=true: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot is for tests that load BPF programs, attach XDP or create network namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root for BPF, XDP and network namespaces (run make test as root)")
	}
}

// LookPath returns the path of an external program the test needs, such as memcached.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s not installed (make deps installs it): %v", name, err)
	}
	return p
}
