package e2e

import (
	"testing"

	"go.uber.org/goleak"
)

// Every server, client and namespace helper a test starts must be gone when the tests end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
