package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/takeover"
	"github.com/xdpcache/xdpcache/server"
)

// takeoverTimeout bounds a whole takeover from the new process's side.
const takeoverTimeout = 90 * time.Second

// takeOver takes srv's sockets and kc's attachment over from the serve listening on control.
// It returns nil, nil when no serve listens there: the caller starts as usual.
func takeOver(ctx context.Context, control string, ident takeover.Identity, srv *server.Server, kc *bpf.Cache,
	f serveFlags, g *errgroup.Group, log, xlog *zap.Logger) (*takeover.Taken, error) {
	tctx, cancel := context.WithTimeout(ctx, takeoverTimeout)
	defer cancel()
	tk := takeover.Taker{Server: srv, Identity: ident, Run: g.Go}
	if kc != nil {
		tk.Kernel = kc
		tk.Attach = func() error { return attachKernelPath(kc, f, xlog) }
	}
	start := time.Now()
	t, err := takeover.Take(tctx, control, tk)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			log.Info("--takeover: no running serve to take over from: starting as usual", zap.String("control", control))
			if kc != nil {
				if err := attachKernelPath(kc, f, xlog); err != nil {
					return nil, fmt.Errorf("kernel path: %w", err)
				}
			}
			return nil, nil
		}
		return nil, fmt.Errorf("take over (the running serve, if any, serves on): %w", err)
	}
	log.Info("took over", zap.Int("from_pid", t.From), zap.Int("items", t.Items), zap.Int("kernel_keys", t.Kernel),
		zap.Int("connections", t.Conns), zap.Bool("kernel_links", t.Links), zap.Duration("took", time.Since(start)))
	return t, nil
}

// listenControl opens the control socket. After a takeover the old process may hold it a moment
// longer: retry until it lets go.
func listenControl(ctx context.Context, path string, retry bool) (*takeover.Listener, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := takeover.Listen(path)
		if err == nil || !retry || time.Now().After(deadline) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// successors starts this binary again with --takeover on SIGHUP, and remembers whom it started.
type successors struct {
	log  *zap.Logger
	mu   sync.Mutex
	pids map[int]bool
}

func newSuccessors(log *zap.Logger) *successors {
	return &successors{log: log, pids: map[int]bool{}}
}

func (s *successors) spawned(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pids[pid]
}

// start runs the binary at its path (a new version installed there included) with our flags
// plus --takeover. The child outlives us: no parent-death signal.
func (s *successors) start(haveTakeover bool) {
	exe, err := os.Executable()
	if err != nil {
		s.log.Error("SIGHUP: cannot find this binary to start a successor", zap.Error(err))
		return
	}
	// A binary replaced on disk shows as "PATH (deleted)": the path is what to run.
	exe = strings.TrimSuffix(exe, " (deleted)")
	args := os.Args[1:]
	if !haveTakeover {
		args = append(append([]string{}, args...), "--takeover")
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		s.log.Error("SIGHUP: cannot start a successor", zap.String("path", exe), zap.Error(err))
		return
	}
	s.mu.Lock()
	s.pids[cmd.Process.Pid] = true
	s.mu.Unlock()
	s.log.Info("SIGHUP: started a successor to take over", zap.String("path", exe), zap.Int("pid", cmd.Process.Pid))
	go func() {
		// Reap it if it exits while we run: a successor that fails says why in its own log.
		if err := cmd.Wait(); err != nil {
			s.log.Error("the successor exited", zap.Int("pid", cmd.Process.Pid), zap.Error(err))
		}
	}()
}
