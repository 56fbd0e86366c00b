package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

func TestProbes(t *testing.T) {
	var c Checks
	mux := http.NewServeMux()
	c.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	if code, body := get(t, srv, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no readiness checks") {
		t.Errorf("readyz with no checks: %d %q, want 503 saying none are set", code, body)
	}
	if code, body := get(t, srv, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("healthz: %d %q, want 200 ok", code, body)
	}

	var serving, attached atomic.Bool
	c.Set("serving", func() error {
		if !serving.Load() {
			return errors.New("not listening yet")
		}
		return nil
	})
	c.Set("kernel", func() error {
		if !attached.Load() {
			return errors.New("not attached")
		}
		return nil
	})
	code, body := get(t, srv, "/readyz")
	if code != http.StatusServiceUnavailable || body != "serving: not listening yet\nkernel: not attached\n" {
		t.Errorf("readyz, both failing: %d %q", code, body)
	}
	serving.Store(true)
	if code, body := get(t, srv, "/readyz"); code != http.StatusServiceUnavailable || body != "kernel: not attached\n" {
		t.Errorf("readyz, kernel failing: %d %q", code, body)
	}
	attached.Store(true)
	if code, body := get(t, srv, "/readyz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("readyz, all passing: %d %q", code, body)
	}
	// Replacing a check keeps its place and takes effect at once.
	c.Set("serving", func() error { return errors.New("draining: handed over") })
	if code, body := get(t, srv, "/readyz"); code != http.StatusServiceUnavailable || body != "serving: draining: handed over\n" {
		t.Errorf("readyz after replacing a check: %d %q", code, body)
	}
	if code, _ := get(t, srv, "/healthz"); code != http.StatusOK {
		t.Errorf("healthz while not ready: %d, want 200 (alive, only not ready)", code)
	}
}

func TestWaitReady(t *testing.T) {
	var c Checks
	var ready atomic.Bool
	c.Set("serving", func() error {
		if !ready.Load() {
			return errors.New("not yet")
		}
		return nil
	})
	mux := http.NewServeMux()
	c.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := WaitReady(ctx, srv.Client(), srv.URL, 10*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "serving: not yet") {
		t.Fatalf("WaitReady while not ready: %v, want the check's reason", err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		ready.Store(true)
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := WaitReady(ctx2, srv.Client(), srv.URL, 10*time.Millisecond); err != nil {
		t.Fatalf("WaitReady once ready: %v", err)
	}
}
