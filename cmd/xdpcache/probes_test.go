package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdpcache/xdpcache/internal/testenv"
)

func probeGet(t *testing.T, url string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// runReady runs `xdpcache ready` against metrics and returns its error and output.
func runReady(metrics string, timeout time.Duration) (string, error) {
	cmd := newReadyCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--metrics-addr", metrics, "--timeout", timeout.String()})
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestServeProbes(t *testing.T) {
	metrics := freeAddr(t)
	startServe(t, "--metrics-addr", metrics)
	if code, body := probeGet(t, "http://"+metrics+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("healthz: %d %q", code, body)
	}
	if code, body := probeGet(t, "http://"+metrics+"/readyz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("readyz of a serving server without a kernel path: %d %q", code, body)
	}
	if out, err := runReady(metrics, 5*time.Second); err != nil || out != "ready\n" {
		t.Errorf("xdpcache ready: %q, %v", out, err)
	}
}

// A kernel path asked for and not attached is not ready, though the server serves.
func TestServeNotReadyWithoutKernelPath(t *testing.T) {
	metrics := freeAddr(t)
	startServe(t, "--metrics-addr", metrics, "--xdp-iface", "xdpcache-none0", "--allow-sources", "127.0.0.0/8")
	code, body := probeGet(t, "http://"+metrics+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "kernel: kernel path off: not attached to xdpcache-none0") {
		t.Errorf("readyz: %d %q, want 503 naming the kernel path", code, body)
	}
	if code, _ := probeGet(t, "http://"+metrics+"/healthz"); code != http.StatusOK {
		t.Errorf("healthz: %d, want 200: the process is alive", code)
	}
	out, err := runReady(metrics, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "kernel path off") {
		t.Errorf("xdpcache ready: %q, %v; want it to fail with the reason", out, err)
	}
}

// freeAddr is a loopback HOST:PORT no one listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
}
