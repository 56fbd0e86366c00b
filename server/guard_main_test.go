package server

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

// No test may leave a connection, datagram loop or timer goroutine behind: the hostile-client
// limits (write and idle timeouts) close connections from inside their goroutines.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.IgnoreSpawner(), testenv.IgnoreStoreClock())
}
