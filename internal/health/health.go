// Package health serves a process's liveness and readiness over HTTP, as Kubernetes probes and
// service managers expect them: /healthz answers 200 while the process can answer at all, and
// /readyz answers 200 only while every readiness check passes, else 503 with the failing checks,
// one "name: reason" line each.
//
// Checks is safe for concurrent use.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Checks is a set of named readiness checks.
type Checks struct {
	mu     sync.Mutex
	names  []string
	checks map[string]func() error
}

// Set adds or replaces the check called name. A check returns nil when ready, else why not; it
// must be quick and must not block (it runs on every probe).
func (c *Checks) Set(name string, check func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checks == nil {
		c.checks = make(map[string]func() error)
	}
	if _, ok := c.checks[name]; !ok {
		c.names = append(c.names, name)
	}
	c.checks[name] = check
}

// Ready runs every check in the order they were first set and returns nil when all pass, else
// the failures joined, each as "name: reason". A set with no checks is not ready: nothing has
// said it serves yet.
func (c *Checks) Ready() error {
	c.mu.Lock()
	names := append([]string(nil), c.names...)
	checks := make([]func() error, len(names))
	for i, n := range names {
		checks[i] = c.checks[n]
	}
	c.mu.Unlock()
	if len(names) == 0 {
		return errors.New("starting: no readiness checks yet")
	}
	var errs []error
	for i, f := range checks {
		if err := f(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", names[i], err))
		}
	}
	return errors.Join(errs...)
}

// Register serves /healthz and /readyz on mux.
func (c *Checks) Register(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := c.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.TrimSpace(err.Error()))
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// WaitReady polls baseURL's /readyz every interval until it answers 200, and returns nil then;
// when ctx ends first it returns the last reason it was not ready.
func WaitReady(ctx context.Context, client *http.Client, baseURL string, interval time.Duration) error {
	url := strings.TrimSuffix(baseURL, "/") + "/readyz"
	var last error
	for {
		err := probe(ctx, client, url)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			// A probe cut short by ctx says nothing new: keep the reason before it.
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %w)", url, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

func probe(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
