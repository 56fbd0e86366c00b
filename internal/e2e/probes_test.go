package e2e

import (
	"net/http"
	"testing"
)

// TestServeReadyWithKernelPath: a serve with --xdp-iface is ready once it serves and its
// program is attached, and /healthz answers as long as it runs.
func TestServeReadyWithKernelPath(t *testing.T) {
	r := newBareRig(t)
	r.startServe(t)
	for _, path := range []string{"/healthz", "/readyz"} {
		code, body, err := r.httpGet(path)
		if err != nil || code != http.StatusOK || string(body) != "ok\n" {
			t.Errorf("GET %s: %d %q %v, want 200 ok", path, code, body, err)
		}
	}
}
