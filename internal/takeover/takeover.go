// Package takeover moves a running `xdpcache serve` to a new process without a dropped request:
// the listening TCP and UDP sockets, the open client connections, the metrics listener, the
// XDP and TC attachments and the items of the store move over a unix control socket, the
// descriptors as SCM_RIGHTS (as Envoy's and HAProxy's hot restarts pass theirs).
//
// The old process (Serve) waits on the control socket. A new process started with the same
// ports (Take) connects and says who it is; the old one, still serving, copies every live item
// over while recording which keys change (server.TrackChanges); then it stops serving at request
// boundaries (server.Detach: nothing is read, so nothing is written, from then on), passes its
// sockets and link descriptors, and streams the keys of its kernel cache and then only the items
// changed or deleted since the copy (all of them again after a flush_all), so the pause grows
// with the writes made during the copy, not with the store. The new one installs the items (flags, expiry, CAS, access state; LRU order as far as the
// store's last-access seconds tell it), fills its own kernel cache with the keys the old one
// held, replaces the program on the running links with its own (so the interface never goes
// without one, and the kernel answers hits throughout, from the old maps and then from the
// new), and says it is ready; the old process answers with the go-ahead, its commit point:
// it will not serve again. Only then does the new one serve the sockets and connections.
// Requests arriving meanwhile wait in the sockets' queues.
//
// If anything fails before the commit, the old process puts its own programs back on the links,
// serves its sockets again, and Serve reports why; the new process, without the go-ahead, does
// not serve and exits with the reason: never both. Nothing here logs: errors carry the reasons.
package takeover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/kernelcache"
	"github.com/xdpcache/xdpcache/server"
)

// Timeouts of the protocol's steps.
const (
	helloTimeout  = 5 * time.Second
	detachTimeout = 10 * time.Second
	// doneTimeout bounds how long the old process waits, detached, for the new one to install
	// the items and start serving.
	doneTimeout = 60 * time.Second
	// copyTimeout bounds the copy of the items made while the old process still serves.
	copyTimeout = 10 * time.Minute
)

// Identity is what must match between the old and the new process: the same sockets and the
// same interface.
type Identity struct {
	Listen      string
	TCPPort     int
	UDPPort     int
	XDPIface    string
	MetricsAddr string
}

type hello struct {
	Identity Identity
	PID      int
}

type refusal struct {
	Reason string
}

type connMeta struct {
	Pending []byte
	Swallow int
}

type linkMeta struct {
	Iface string
	Mode  string
}

type offer struct {
	PID     int
	TCP     int
	UDP     int
	Conns   []connMeta
	Metrics bool
	Links   *linkMeta // the XDP and TC links follow the other descriptors; nil without them
}

func (o offer) files() int {
	n := o.TCP + o.UDP + len(o.Conns)
	if o.Metrics {
		n++
	}
	if o.Links != nil {
		n += 2
	}
	return n
}

type done struct {
	OK    bool
	Error string
}

// Giver is what the old process gives away.
type Giver struct {
	Server   *server.Server
	Kernel   *bpf.Cache // nil: no kernel path
	Metrics  net.Listener
	Identity Identity
}

// Listener is the old process's control socket.
type Listener struct {
	ln *net.UnixListener
}

// Listen opens the control socket at path; a path starting with @ is in the abstract namespace
// (per network namespace, no file to clean up).
func Listen(path string) (*Listener, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	return &Listener{ln: ln}, nil
}

// Close closes the control socket.
func (l *Listener) Close() error { return l.ln.Close() }

// Handed describes a takeover that succeeded: the new process serves, the old one holds nothing
// it must keep (its copies of the sockets and links are closed).
type Handed struct {
	To     int // the new process's pid
	Items  int
	Conns  int
	Kernel int // kernel cache keys sent
	// Paused is how long the old process was detached before the commit: what requests that
	// reach userspace waited in the sockets' queues.
	Paused time.Duration
}

// Serve answers takeover requests until one succeeds, which it returns, or until ctx ends (nil,
// ctx's error). A request that fails leaves the server serving as before and is reported to
// failed, if not nil, with why. A takeover in progress when ctx ends is completed or undone
// first.
func (l *Listener) Serve(ctx context.Context, g Giver, failed func(error)) (*Handed, error) {
	stop := context.AfterFunc(ctx, func() { l.ln.SetDeadline(time.Now()) })
	defer stop()
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return nil, fmt.Errorf("accept on control socket: %w", err)
		}
		h, err := give(c, g)
		c.Close()
		if err == nil {
			return h, nil
		}
		if failed != nil {
			failed(err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// give runs one takeover on c, from the old side.
func give(c *net.UnixConn, g Giver) (h *Handed, err error) {
	uid, err := peerUID(c)
	if err != nil {
		return nil, fmt.Errorf("read the peer's credentials: %w", err)
	}
	if me := uint32(os.Geteuid()); uid != me && uid != 0 {
		_ = writeJSON(c, kindRefuse, refusal{fmt.Sprintf("uid %d may not take over a server of uid %d", uid, me)})
		return nil, fmt.Errorf("refused a takeover from uid %d", uid)
	}
	_ = c.SetDeadline(time.Now().Add(helloTimeout))
	var hi hello
	if err := expectJSON(c, kindHello, &hi); err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	if hi.Identity != g.Identity {
		reason := fmt.Sprintf("different sockets or interface: this server has %+v, the new one %+v", g.Identity, hi.Identity)
		_ = writeJSON(c, kindRefuse, refusal{reason})
		return nil, fmt.Errorf("refused a takeover from pid %d: %s", hi.PID, reason)
	}

	// The items, copied while still serving; after Detach only what changed meanwhile follows,
	// so the pause does not grow with the store.
	_ = c.SetDeadline(time.Now().Add(copyTimeout))
	stopTracking := g.Server.TrackChanges()
	tracking := true
	defer func() {
		if tracking {
			stopTracking()
		}
	}()
	npre, err := sendItems(c, g.Server.Store(), nil, kindPreItems)
	if err != nil {
		return nil, err
	}
	if err := writeFrame(c, kindPreEnd, nil); err != nil {
		return nil, fmt.Errorf("send the end of the copy: %w", err)
	}
	// Wait until the new process has installed the copy: the pause starts only then.
	if kind, _, err := readFrame(c, 0); err != nil || kind != kindCopied {
		return nil, fmt.Errorf("wait for the copy to be installed: frame %q, %v", kind, err)
	}

	// Everything that can fail without disturbing service, first.
	var linkFiles []*os.File
	var links *linkMeta
	if g.Kernel != nil {
		if iface, _ := g.Kernel.Attached(); iface != "" {
			xf, tf, iface, mode, err := g.Kernel.LinkFiles()
			if err != nil {
				_ = writeJSON(c, kindRefuse, refusal{err.Error()})
				return nil, fmt.Errorf("prepare the links: %w", err)
			}
			linkFiles = []*os.File{xf, tf}
			links = &linkMeta{Iface: iface, Mode: string(mode)}
		}
	}
	defer closeFiles(linkFiles)
	var metricsFile *os.File
	if g.Metrics != nil {
		f, err := fileOf(g.Metrics)
		if err != nil {
			_ = writeJSON(c, kindRefuse, refusal{err.Error()})
			return nil, fmt.Errorf("prepare the metrics listener: %w", err)
		}
		metricsFile = f
		defer f.Close()
	}

	// From here on the server is detached; any failure puts it back.
	dctx, cancel := context.WithTimeout(context.Background(), detachTimeout)
	detached := time.Now()
	sk, derr := g.Server.Detach(dctx)
	cancel()
	if sk == nil {
		_ = writeJSON(c, kindRefuse, refusal{derr.Error()})
		return nil, fmt.Errorf("stop serving: %w", derr)
	}
	var adopted bool // whether the new process may have put its programs on the links
	defer func() {
		if err == nil {
			_ = sk.Close()
			return
		}
		if adopted && g.Kernel != nil {
			if rerr := g.Kernel.Reclaim(); rerr != nil {
				err = errors.Join(err, fmt.Errorf("put the kernel programs back: %w", rerr))
			}
		}
		var mu sync.Mutex
		var serveErrs []error
		// The old process serves again: the Serve calls run until it shuts down.
		if aerr := g.Server.Attach(sk, func(f func() error) {
			go func() {
				if e := f(); e != nil {
					mu.Lock()
					serveErrs = append(serveErrs, e)
					mu.Unlock()
				}
			}()
		}); aerr != nil {
			err = errors.Join(err, fmt.Errorf("serve again: %w", aerr))
		}
	}()
	if derr != nil {
		// Some connections did not stop in time and were closed; the rest moves on.
		derr = fmt.Errorf("stop serving: %w", derr)
	}

	_ = c.SetDeadline(time.Now().Add(doneTimeout))
	o := offer{PID: os.Getpid(), TCP: len(sk.TCP), UDP: len(sk.UDP), Metrics: metricsFile != nil, Links: links}
	for _, cn := range sk.Conns {
		o.Conns = append(o.Conns, connMeta{Pending: cn.Pending, Swallow: cn.Swallow})
	}
	files := sk.Files()
	if metricsFile != nil {
		files = append(files, metricsFile)
	}
	files = append(files, linkFiles...)
	if err := writeJSON(c, kindOffer, o); err != nil {
		return nil, fmt.Errorf("send offer: %w", err)
	}
	if err := sendFiles(c, files); err != nil {
		return nil, err
	}
	adopted = links != nil

	nkeys, err := sendKernelKeys(c, g.Kernel)
	if err != nil {
		return nil, err
	}
	changed, all := stopTracking()
	tracking = false
	var nitems int
	if all {
		// A flush_all during the copy: every key may differ; send them all again.
		if err := writeFrame(c, kindReset, nil); err != nil {
			return nil, fmt.Errorf("send reset: %w", err)
		}
		nitems, err = sendItems(c, g.Server.Store(), nil, kindItems)
	} else {
		nitems, err = sendChanged(c, g.Server.Store(), changed)
	}
	if err != nil {
		return nil, err
	}
	nitems += npre
	if err := writeFrame(c, kindEnd, nil); err != nil {
		return nil, fmt.Errorf("send end: %w", err)
	}
	var d done
	if err := expectJSON(c, kindDone, &d); err != nil {
		return nil, fmt.Errorf("wait for the new process (pid %d): %w", hi.PID, err)
	}
	if !d.OK {
		return nil, fmt.Errorf("the new process (pid %d) failed: %s", hi.PID, d.Error)
	}
	// The commit point: once the new process may serve, this one never serves again. A write
	// that fails means the new process is gone and will not read it: serve again.
	if err := writeFrame(c, kindCommit, nil); err != nil {
		return nil, fmt.Errorf("tell the new process (pid %d) to serve: %w", hi.PID, err)
	}
	_ = derr // connections closed at Detach are the only loss; the takeover stands
	return &Handed{To: hi.PID, Items: nitems, Conns: len(sk.Conns), Kernel: nkeys, Paused: time.Since(detached)}, nil
}

func sendKernelKeys(c *net.UnixConn, k *bpf.Cache) (int, error) {
	if k == nil {
		return 0, nil
	}
	keys := k.Keys()
	if err := sendKeys(c, kindKernelKeys, keys); err != nil {
		return 0, fmt.Errorf("send kernel keys: %w", err)
	}
	return len(keys), nil
}

// sendKeys sends keys in kind frames of (u16 len, key) records.
func sendKeys(c *net.UnixConn, kind byte, keys []string) error {
	var b []byte
	for _, key := range keys {
		b = appendKey(b, key)
		if len(b) >= maxFrame/2 {
			if err := writeFrame(c, kind, b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	if len(b) > 0 {
		return writeFrame(c, kind, b)
	}
	return nil
}

// sendItems streams the live items of keys (nil: the whole store) in kind frames, least
// recently used first, so that installing them in order rebuilds the LRU order (to the second of
// their last access: the store's API gives no finer order).
func sendItems(c *net.UnixConn, st *cache.Store, keys []string, kind byte) (int, error) {
	type kit struct {
		key string
		it  cache.Item
	}
	var all []kit
	if keys == nil {
		keys = st.Keys()
	}
	for _, key := range keys {
		_, _ = st.Do(key, func(cur *cache.Item) (*cache.Item, cache.Op) {
			if cur != nil {
				it := *cur
				it.Value = append([]byte(nil), cur.Value...) // the store's memory is Do's only
				all = append(all, kit{key, it})
			}
			return nil, cache.Keep
		})
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].it.LastAccess < all[j].it.LastAccess })
	var b []byte
	for i := range all {
		rec := appendItem(nil, all[i].key, &all[i].it)
		if len(b) > 0 && len(b)+len(rec) > maxFrame {
			if err := writeFrame(c, kind, b); err != nil {
				return 0, fmt.Errorf("send items: %w", err)
			}
			b = b[:0]
		}
		b = append(b, rec...)
	}
	if len(b) > 0 {
		if err := writeFrame(c, kind, b); err != nil {
			return 0, fmt.Errorf("send items: %w", err)
		}
	}
	return len(all), nil
}

// sendChanged sends the keys changed since the copy: the items of those still there, then the
// keys of those gone.
func sendChanged(c *net.UnixConn, st *cache.Store, changed []string) (int, error) {
	var live, gone []string
	for _, key := range changed {
		found := false
		_, _ = st.Do(key, func(cur *cache.Item) (*cache.Item, cache.Op) {
			found = cur != nil
			return nil, cache.Keep
		})
		if found {
			live = append(live, key)
		} else {
			gone = append(gone, key)
		}
	}
	n := 0
	if len(live) > 0 { // sendItems takes nil keys for the whole store
		var err error
		if n, err = sendItems(c, st, live, kindItems); err != nil {
			return 0, err
		}
	}
	if err := sendKeys(c, kindDeleted, gone); err != nil {
		return 0, fmt.Errorf("send deleted keys: %w", err)
	}
	return n, nil
}

// Taker is what the new process takes over with.
type Taker struct {
	Server   *server.Server
	Kernel   *bpf.Cache // loaded, not attached; nil without a kernel path
	Identity Identity
	// Attach attaches Kernel itself, when the old process had no kernel path to hand over.
	Attach func() error
	// Run runs a Serve call of Server.Attach (errgroup.Group.Go).
	Run func(func() error)
	// Ready, if not nil, is the last check before this process says it is ready to serve; an
	// error aborts the takeover and the old process serves on.
	Ready func() error
}

// Taken describes a takeover done: the process serves, the old one exits.
type Taken struct {
	From    int          // the old process's pid
	Metrics net.Listener // the old process's metrics listener, nil if it had none
	Items   int
	Kernel  int // kernel cache keys filled
	Conns   int
	Links   bool // the links were taken over (else Attach was called, if there was a kernel)
}

// Take connects to the control socket at path and takes the server over. On error nothing was
// taken: the old process serves on (or the error says it could not be asked).
func Take(ctx context.Context, path string, tk Taker) (t *Taken, err error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to the running server's control socket %s: %w", path, err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := writeJSON(c, kindHello, hello{Identity: tk.Identity, PID: os.Getpid()}); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	// The copy made while the old process serves, up to its offer.
	st := tk.Server.Store()
	copied := map[string]bool{}
	var maxCAS uint64
	var o offer
	for {
		kind, b, err := readFrame(c, maxItemFrame)
		if err != nil {
			return nil, fmt.Errorf("take over: %w", err)
		}
		if kind == kindPreEnd {
			if err := writeFrame(c, kindCopied, nil); err != nil {
				return nil, fmt.Errorf("take over: %w", err)
			}
			continue
		}
		if kind != kindPreItems {
			if err := decodeJSON(kind, b, kindOffer, &o); err != nil {
				return nil, fmt.Errorf("take over: %w", err)
			}
			break
		}
		if err := parseItems(b, func(m movedItem) error {
			maxCAS = max(maxCAS, m.it.CAS)
			copied[m.key] = true
			_, err := install(st, nil, m, false)
			return err
		}); err != nil {
			return nil, err
		}
	}
	// From here on the old process waits, detached, for done: say why if anything fails.
	saidDone := false
	defer func() {
		if err != nil && !saidDone {
			_ = writeJSON(c, kindDone, done{Error: err.Error()})
		}
	}()
	files, err := recvFiles(c, o.files())
	if err != nil {
		return nil, err
	}
	sk := &server.Sockets{TCP: files[:o.TCP], UDP: files[o.TCP : o.TCP+o.UDP]}
	rest := files[o.TCP+o.UDP:]
	for i, cm := range o.Conns {
		sk.Conns = append(sk.Conns, server.Conn{File: rest[i], Pending: cm.Pending, Swallow: cm.Swallow})
	}
	rest = rest[len(o.Conns):]
	var metricsFile *os.File
	if o.Metrics {
		metricsFile, rest = rest[0], rest[1:]
	}
	var xdpFile, tcFile *os.File
	if o.Links != nil {
		xdpFile, tcFile = rest[0], rest[1]
	}
	owned := true
	defer func() {
		if owned {
			closeFiles(files)
		}
	}()
	switch {
	case o.Links != nil && tk.Kernel == nil:
		return nil, errors.New("the running server has a kernel path and this process none (it failed to load: see its log)")
	case o.Links != nil && o.Links.Iface != tk.Identity.XDPIface:
		return nil, fmt.Errorf("the running server's links are on %s, not %s", o.Links.Iface, tk.Identity.XDPIface)
	}

	t = &Taken{From: o.PID, Conns: len(o.Conns), Links: o.Links != nil, Items: len(copied)}
	kernelKeys := map[string]bool{}
	filled := map[string]bool{}
	for {
		kind, b, err := readFrame(c, maxItemFrame)
		if err != nil {
			return nil, fmt.Errorf("receive items: %w", err)
		}
		switch kind {
		case kindKernelKeys:
			if err := parseKeys(b, func(k string) { kernelKeys[k] = true }); err != nil {
				return nil, err
			}
			continue
		case kindItems:
			if err := parseItems(b, func(m movedItem) error {
				maxCAS = max(maxCAS, m.it.CAS)
				ok, err := install(st, tk.Kernel, m, kernelKeys[m.key])
				if err != nil {
					return err
				}
				if !copied[m.key] {
					t.Items++
				}
				if ok {
					filled[m.key] = true
				}
				return nil
			}); err != nil {
				return nil, err
			}
			continue
		case kindDeleted:
			if err := parseKeys(b, func(k string) {
				_, _ = st.Do(k, func(*cache.Item) (*cache.Item, cache.Op) { return nil, cache.Delete })
				if copied[k] {
					t.Items--
					delete(copied, k)
				}
			}); err != nil {
				return nil, err
			}
			continue
		case kindReset:
			for k := range copied {
				_, _ = st.Do(k, func(*cache.Item) (*cache.Item, cache.Op) { return nil, cache.Delete })
			}
			copied = map[string]bool{}
			t.Items = 0
			continue
		case kindEnd:
		default:
			return nil, fmt.Errorf("%w: frame %q among the items", errProtocol, kind)
		}
		break
	}
	st.RaiseCAS(maxCAS)
	// The kernel keys of items copied before the offer and unchanged since: fill them now.
	if tk.Kernel != nil {
		for k := range kernelKeys {
			if filled[k] || !copied[k] {
				continue
			}
			if ok, err := fillKernel(st, tk.Kernel, k); err != nil {
				return nil, err
			} else if ok {
				filled[k] = true
			}
		}
	}
	t.Kernel = len(filled)

	if o.Links != nil {
		owned = false
		// The rest of the files are the server's and the metrics listener's.
		if err := tk.Kernel.Adopt(xdpFile, tcFile, o.Links.Iface, bpf.Mode(o.Links.Mode)); err != nil {
			closeFiles(files[:len(files)-2])
			return nil, fmt.Errorf("take the kernel path over: %w", err)
		}
	} else if tk.Kernel != nil && tk.Attach != nil {
		if err := tk.Attach(); err != nil {
			return nil, fmt.Errorf("attach the kernel path: %w", err)
		}
	}
	owned = false
	if metricsFile != nil {
		ln, err := net.FileListener(metricsFile)
		metricsFile.Close()
		if err != nil {
			_ = sk.Close()
			return nil, fmt.Errorf("take the metrics listener: %w", err)
		}
		t.Metrics = ln
	}
	// Ready: the old process commits (and never serves again) or serves on. Without its commit
	// this process must not serve: both would, and the old one's kernel copy would go stale.
	if err := ctx.Err(); err != nil {
		closeTaken(sk, t)
		return nil, err
	}
	if tk.Ready != nil {
		if err := tk.Ready(); err != nil {
			closeTaken(sk, t)
			return nil, fmt.Errorf("not ready: %w", err)
		}
	}
	saidDone = true
	if err := writeJSON(c, kindDone, done{OK: true}); err != nil {
		closeTaken(sk, t)
		return nil, fmt.Errorf("tell the old process (pid %d) this one is ready: %w", o.PID, err)
	}
	if kind, _, err := readFrame(c, 0); err != nil || kind != kindCommit {
		closeTaken(sk, t)
		return nil, fmt.Errorf("no go-ahead from the old process (pid %d), which serves on: frame %q, %v", o.PID, kind, err)
	}
	if err := tk.Server.Attach(sk, tk.Run); err != nil {
		return nil, fmt.Errorf("serve the sockets: %w", err)
	}
	// Wait for the old process to close the connection, so that it has closed its copies.
	_ = c.SetReadDeadline(time.Now().Add(doneTimeout))
	var one [1]byte
	_, _ = c.Read(one[:])
	return t, nil
}

// closeTaken closes what a takeover that did not commit took: the sockets and the metrics
// listener (the links stay with the Cache, whose owner closes it; the old process has put its
// programs back on them).
func closeTaken(sk *server.Sockets, t *Taken) {
	_ = sk.Close()
	if t.Metrics != nil {
		_ = t.Metrics.Close()
	}
}

// install stores a moved item with its CAS and access state and, if the old kernel cache held
// it, fills the new kernel cache with it, under the key's store lock. It reports whether it
// filled the kernel.
func install(st *cache.Store, k *bpf.Cache, m movedItem, inKernel bool) (filled bool, err error) {
	it := m.it
	it.Value = append([]byte(nil), m.it.Value...)
	if _, err := st.Do(m.key, func(*cache.Item) (*cache.Item, cache.Op) { return &it, cache.Install }); err != nil {
		if errors.Is(err, cache.ErrTooLarge) || errors.Is(err, cache.ErrNoMemory) {
			return false, nil // this server's limits are smaller: as if evicted
		}
		return false, fmt.Errorf("install %q: %w", m.key, err)
	}
	var ferr error
	_, _ = st.Do(m.key, func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			return nil, cache.Keep
		}
		cur.LastAccess, cur.Fetched, cur.Stale, cur.WinIssued = m.it.LastAccess, m.it.Fetched, m.it.Stale, m.it.WinIssued
		if inKernel && k != nil {
			ferr = fillFrom(k, m.key, cur)
			filled = ferr == nil
		}
		return nil, cache.Keep
	})
	if ferr != nil {
		return false, fmt.Errorf("fill the kernel cache with %q: %w", m.key, ferr)
	}
	return filled, nil
}

// fillKernel fills the kernel cache with key's item as the store holds it, under the key's lock.
// It reports whether it did.
func fillKernel(st *cache.Store, k *bpf.Cache, key string) (bool, error) {
	var ferr error
	filled := false
	_, _ = st.Do(key, func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			return nil, cache.Keep
		}
		ferr = fillFrom(k, key, cur)
		filled = ferr == nil
		return nil, cache.Keep
	})
	if ferr != nil {
		return false, fmt.Errorf("fill the kernel cache with %q: %w", key, ferr)
	}
	return filled, nil
}

// fillFrom fills the kernel cache with cur, key's item, read under the key's store lock.
func fillFrom(k *bpf.Cache, key string, cur *cache.Item) error {
	ki := kernelcache.Item{Key: key, Flags: cur.Flags, Value: cur.Value, CAS: cur.CAS,
		MetaState: cur.Stale || cur.WinIssued}
	if cur.Exptime != 0 {
		ki.Expires = time.Unix(cur.Exptime, 0)
	}
	return k.Fill(ki)
}

func fileOf(ln net.Listener) (*os.File, error) {
	if f, ok := ln.(interface{ File() (*os.File, error) }); ok {
		return f.File()
	}
	return nil, fmt.Errorf("%T has no file", ln)
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}
