package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// Every server, client and namespace helper a test starts must be gone when the tests end; the
// serve binary built for the process tests goes too.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.IgnoreSpawner(), testenv.IgnoreStoreClock(), goleak.Cleanup(func(code int) {
		if binPath != "" {
			os.RemoveAll(filepath.Dir(binPath))
		}
		os.Exit(code)
	}))
}
