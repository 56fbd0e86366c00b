// Package bpf is the kernel half of xdpcache: an XDP program that answers memcached UDP get/gets
// hits from BPF maps, the loader that attaches it, and the Go API (Cache) through which the
// server fills and invalidates the kernel copy.
//
// # How the kernel cache stays exact, consistent and untorn
//
// Entries are immutable. An entry holds the server's own reply bytes for one item
// ("VALUE <key> <flags> <bytes>\r\n<value>\r\n", built with internal/protocol), the " <cas>" text
// gets inserts after the header, the precomputed checksum sums of those pieces, the fill time and
// the expiry (CLOCK_MONOTONIC ns). It lives in the hash map of its size class (data up to 128,
// 256, 512, 1024 or 1392 bytes, BPF_F_NO_PREALLOC, so memory follows item size), keyed by a
// version number that is never reused. The index map takes the FNV-1a hash of a key to the class
// and version of its current entry.
//
//   - Fill (Offer): insert the new entry under a fresh version, then point the index at it. The
//     kernel links a hash element only after copying its value, and replaces an index value by
//     swapping in a new element, so a reader sees the old entry or the new one, whole.
//   - Invalidate: delete the index element. Once the syscall returns, no lookup can reach the
//     entry, so no packet processed afterwards is answered from it. If the delete fails, the
//     fallback is a flush, a single store that cannot fail. The entry itself is deleted at least
//     retireAfter later: a program run that read the index before the delete still reads an
//     intact entry (the kernel may reuse a deleted element's memory at once).
//   - Exact keys: the program compares the request key with the key inside the entry; a hash
//     collision is a miss, never another key's value. Userspace keeps one key per hash.
//   - Flush(deadline): one aligned 8-byte store into the program's mmapped .bss raises
//     flushed_before_ns; entries filled before it are dead. A future deadline is applied at once
//     (conservative: the kernel stops serving those entries early and the server answers them).
//   - Expiry: the program treats now >= expires_ns as a miss; expiries are converted from wall
//     time with a small margin so the kernel gives up on an item before the server does.
//
// The program answers in two passes: the first finds and checks every key of the request and
// sums the reply's length and checksum without touching the packet; only if all keys are
// servable and the reply fits one datagram does the second pass resize the packet and copy each
// entry with bpf_xdp_store_bytes (a kernel memcpy, not a byte loop). If anything fails after the
// resize, the saved request is put back and the packet passes.
//
// Userspace holds the budget (bytes and entries) and evicts with CLOCK: the program sets a
// referenced flag in the index value on every hit, and the eviction hand reads and clears it.
// Admission decides which offered items go in at all (always, or after repeated offers).
package bpf

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/server"
)

var _ server.KernelCache = (*Cache)(nil)

// Options configure the kernel cache.
type Options struct {
	Port       uint16 // UDP port the program answers (the server's -U); 0 means 11211
	MaxBytes   int64  // kernel cache budget, bytes of entries; 0 means 64 MiB
	MaxEntries int    // upper bound on entries; 0 means 65536
	ReplyDSCP  uint8  // DSCP set on kernel replies; 0 = off
	Admission  string // "always" | "frequency" (default)
	MTU        int    // interface MTU, caps reply size; 0 = 1500
}

// Errors.
var (
	ErrClosed  = errors.New("bpf: cache closed")
	ErrOptions = errors.New("bpf: invalid options")
)

const (
	// retireAfter is how long an entry stays in its map after leaving the index. A program run
	// takes microseconds; a second is a wide margin.
	retireAfter = time.Second
	// expiryMargin makes the kernel stop serving an item slightly before the server expires it.
	expiryMargin = 2 * time.Millisecond
	// overheadBytes approximates the per-entry cost beyond header and data: index element, hash
	// element headers and the version key.
	overheadBytes = 96
)

// kentry is userspace's record of one key in the kernel cache.
type kentry struct {
	key     string
	hash    uint64
	class   int
	version uint64
	cost    int64
	flags   uint32
	cas     uint64
	size    int
	expires time.Time
	filled  uint64
	slot    int // position in Cache.ring
}

type retired struct {
	class   int
	version uint64
	at      time.Time
}

// Cache is the kernel cache: the loaded program, its maps and userspace's bookkeeping. It
// implements server.KernelCache and is safe for concurrent use.
type Cache struct {
	opts        Options
	retireAfter time.Duration // see the constant; tests of sequential runs shorten it
	objs        xdpcacheObjects
	classMaps   [numClasses]*ebpf.Map
	maxReply    int // largest UDP payload a reply may have

	mu            sync.Mutex
	closed        bool
	policy        admission
	entries       map[string]*kentry
	byHash        map[uint64]*kentry
	ring          []*kentry // CLOCK order
	hand          int
	used          int64
	version       uint64
	retiring      []retired
	flushedBefore uint64
	link          link.Link
	statsCloser   io.Closer
	rest          *ebpf.Collection // objects of the spec the Cache does not use itself
}

func (o *Options) setDefaults() error {
	if o.Port == 0 {
		o.Port = 11211
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 64 << 20
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = 65536
	}
	if o.MTU == 0 {
		o.MTU = 1500
	}
	if o.Admission == "" {
		o.Admission = AdmitFrequency
	}
	switch {
	case o.MaxBytes < 0 || o.MaxEntries < 0:
		return fmt.Errorf("%w: negative size", ErrOptions)
	case o.ReplyDSCP > 63:
		return fmt.Errorf("%w: DSCP %d over 63", ErrOptions, o.ReplyDSCP)
	case o.MTU < 576 || o.MTU > 65535:
		return fmt.Errorf("%w: MTU %d", ErrOptions, o.MTU)
	}
	return nil
}

// New loads the program and its maps, sized from opts. It does not attach: see Attach.
func New(opts Options) (*Cache, error) {
	spec, err := loadXdpcache()
	if err != nil {
		return nil, fmt.Errorf("load xdpcache spec: %w", err)
	}
	return newCache(opts, spec)
}

// newCache loads spec, the cache object or its benchmark variant (which adds programs and maps
// that stay in c.rest).
func newCache(opts Options, spec *ebpf.CollectionSpec) (*Cache, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	policy, err := newAdmission(opts.Admission, opts.MaxEntries)
	if err != nil {
		return nil, err
	}
	for name, v := range map[string]any{
		"cfg_port":       opts.Port,
		"cfg_reply_dscp": opts.ReplyDSCP,
		"cfg_mtu":        uint32(opts.MTU),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	// Retired entries wait out retireAfter in their maps; the slack leaves room for a full
	// turnover of the cache within that time. Beyond it, fills are skipped until deletes catch up.
	slack := uint32(max(opts.MaxEntries, 64))
	spec.Maps["index_map"].MaxEntries = uint32(opts.MaxEntries) + slack
	for _, capacity := range classCaps {
		n := min(int64(opts.MaxEntries), opts.MaxBytes/int64(capacity+entryHdrBytes+overheadBytes)+1)
		spec.Maps[fmt.Sprintf("entries_%d", capacity)].MaxEntries = uint32(n) + slack
	}
	c := &Cache{
		opts:        opts,
		retireAfter: retireAfter,
		policy:      policy,
		entries:     make(map[string]*kentry),
		byHash:      make(map[uint64]*kentry),
		maxReply:    min(protocol.MaxDatagram, opts.MTU-20-8),
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("load xdpcache: %w", verifierDetail(err))
	}
	if err := coll.Assign(&c.objs); err != nil {
		coll.Close()
		return nil, fmt.Errorf("assign xdpcache objects: %w", err)
	}
	c.rest = coll
	c.classMaps = [numClasses]*ebpf.Map{c.objs.Entries128, c.objs.Entries256, c.objs.Entries512, c.objs.Entries1024, c.objs.Entries1392}
	return c, nil
}

// Program is the XDP program, for attaching elsewhere or running in tests.
func (c *Cache) Program() *ebpf.Program { return c.objs.XdpCache }

// monoNow is CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
func monoNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("bpf: clock_gettime(CLOCK_MONOTONIC): " + err.Error()) // cannot fail on Linux
	}
	return uint64(ts.Nano())
}

// monoAt converts wall time t to CLOCK_MONOTONIC ns, given the same instant on both clocks.
func monoAt(t time.Time, wallNow time.Time, mono uint64) uint64 {
	d := t.Sub(wallNow)
	if d <= 0 {
		return mono
	}
	return mono + uint64(d)
}

// Offer applies the admission policy and may copy it into the kernel. Items the program cannot
// serve (key not printable ASCII or too long, reply over one datagram) are ignored.
func (c *Cache) Offer(it server.KernelItem) error {
	if !servableKey(it.Key) {
		return nil
	}
	enc := encode(it.Key, it.Flags, it.Value, it.CAS)
	class := classFor(len(enc.data))
	if class < 0 || frameLen+len(enc.data)+len(enc.cas)+endLen > c.maxReply {
		return nil
	}
	wall, mono := time.Now(), monoNow()
	var expires uint64
	if !it.Expires.IsZero() {
		if it.Expires.Sub(wall) <= expiryMargin {
			return nil
		}
		expires = monoAt(it.Expires.Add(-expiryMargin), wall, mono)
	}
	hash := fnv1a(it.Key)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.reap(wall)
	if mono < c.flushedBefore {
		return nil // it would be dead on arrival
	}
	old := c.entries[it.Key]
	if old != nil {
		if old.cas == it.CAS && old.flags == it.Flags && old.size == len(it.Value) &&
			old.expires.Equal(it.Expires) && old.filled >= c.flushedBefore {
			return nil // already current
		}
	} else {
		if c.byHash[hash] != nil {
			return nil // another key holds this hash; keep it
		}
		if !c.policy.admit(hash) {
			return nil
		}
	}
	cost := int64(classCaps[class] + entryHdrBytes + overheadBytes)
	if old != nil {
		// Replacing frees old's budget once the index points elsewhere; count it now.
		c.removeRecord(old)
	}
	for len(c.ring) > 0 && (c.used+cost > c.opts.MaxBytes || len(c.ring) >= c.opts.MaxEntries) {
		if err := c.evictOne(); err != nil {
			if old != nil {
				c.dropFromIndex(old)
			}
			return err
		}
	}
	if cost > c.opts.MaxBytes || c.opts.MaxEntries == 0 {
		if old != nil {
			c.dropFromIndex(old)
		}
		return nil
	}

	c.version++
	e := &kentry{
		key: it.Key, hash: hash, class: class, version: c.version, cost: cost,
		flags: it.Flags, cas: it.CAS, size: len(it.Value), expires: it.Expires, filled: mono,
	}
	value := entryValue(class, enc.header(len(it.Key), mono, expires), enc.data)
	if err := c.classMaps[class].Update(e.version, value, ebpf.UpdateNoExist); err != nil {
		if old != nil {
			c.dropFromIndex(old)
		}
		if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) {
			return nil // full of retiring entries: skip this fill
		}
		return fmt.Errorf("insert kernel entry %q: %w", it.Key, err)
	}
	iv := xdpcacheIndexVal{Version: e.version, Class: uint32(class)}
	if err := c.objs.IndexMap.Update(hash, &iv, ebpf.UpdateAny); err != nil {
		// The new entry was never reachable: delete it now.
		_ = c.classMaps[class].Delete(e.version)
		if old != nil {
			c.dropFromIndex(old)
		}
		return fmt.Errorf("point kernel index at %q: %w", it.Key, err)
	}
	if old != nil {
		c.retire(old, wall) // the index no longer reaches it
	}
	c.addRecord(e)
	return nil
}

// addRecord and removeRecord keep entries, byHash, ring and used in step.
func (c *Cache) addRecord(e *kentry) {
	c.entries[e.key] = e
	c.byHash[e.hash] = e
	e.slot = len(c.ring)
	c.ring = append(c.ring, e)
	c.used += e.cost
}

func (c *Cache) removeRecord(e *kentry) {
	delete(c.entries, e.key)
	delete(c.byHash, e.hash)
	last := len(c.ring) - 1
	c.ring[e.slot] = c.ring[last]
	c.ring[e.slot].slot = e.slot
	c.ring[last] = nil
	c.ring = c.ring[:last]
	if c.hand >= len(c.ring) {
		c.hand = 0
	}
	c.used -= e.cost
}

// dropFromIndex makes e unreachable and schedules its entry's deletion. Used when e's record is
// already gone from the bookkeeping.
func (c *Cache) dropFromIndex(e *kentry) {
	if err := c.objs.IndexMap.Delete(e.hash); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		c.flushNow()
	}
	c.retire(e, time.Now())
}

func (c *Cache) retire(e *kentry, now time.Time) {
	c.retiring = append(c.retiring, retired{class: e.class, version: e.version, at: now})
	if c.retireAfter == 0 {
		c.reap(now)
	}
}

// reap deletes entries that left the index at least retireAfter ago.
func (c *Cache) reap(now time.Time) {
	n := 0
	for _, r := range c.retiring {
		if now.Sub(r.at) < c.retireAfter {
			break
		}
		// A failed delete leaves an unreachable entry behind; the map's slack absorbs it.
		_ = c.classMaps[r.class].Delete(r.version)
		n++
	}
	c.retiring = c.retiring[n:]
}

// evictOne removes the first entry the CLOCK hand finds unreferenced (or dead after a flush),
// clearing referenced flags as it passes. Bounded: after two sweeps it evicts where it stands.
func (c *Cache) evictOne() error {
	for step := 0; step < 2*len(c.ring)+1; step++ {
		e := c.ring[c.hand]
		if e.filled < c.flushedBefore {
			return c.invalidateRecord(e)
		}
		var iv xdpcacheIndexVal
		if err := c.objs.IndexMap.Lookup(e.hash, &iv); err != nil || iv.Version != e.version {
			return c.invalidateRecord(e)
		}
		if iv.Referenced == 0 || step >= 2*len(c.ring) {
			return c.invalidateRecord(e)
		}
		iv.Referenced = 0
		if err := c.objs.IndexMap.Update(e.hash, &iv, ebpf.UpdateExist); err != nil {
			return c.invalidateRecord(e)
		}
		c.hand = (c.hand + 1) % len(c.ring)
	}
	return c.invalidateRecord(c.ring[c.hand])
}

// invalidateRecord removes e from the index (or flushes everything if that fails) and from the
// bookkeeping. It never leaves e servable.
func (c *Cache) invalidateRecord(e *kentry) error {
	c.removeRecord(e)
	if err := c.objs.IndexMap.Delete(e.hash); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		c.flushNow()
	}
	c.retire(e, time.Now())
	return nil
}

// Invalidate stops the kernel serving key. When it returns, no packet the program processes
// from then on is answered with the old value.
func (c *Cache) Invalidate(key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil // nothing is served any more
	}
	c.reap(time.Now())
	e := c.entries[key]
	if e == nil {
		return nil
	}
	return c.invalidateRecord(e)
}

// Flush makes every entry filled before deadline unservable. It takes effect at once even for a
// future deadline: serving less from the kernel is always safe, the server answers instead.
func (c *Cache) Flush(deadline time.Time) error {
	wall, mono := time.Now(), monoNow()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	return c.setFlushedBefore(monoAt(deadline, wall, mono))
}

// flushNow kills every entry filled until now; the fallback when an index delete fails.
func (c *Cache) flushNow() {
	_ = c.setFlushedBefore(monoNow() + 1)
}

// setFlushedBefore raises flushed_before_ns. Variable.Set copies 8 aligned bytes into the mmapped
// .bss, one store on amd64 and arm64, so the program reads the old or the new value, never a mix.
func (c *Cache) setFlushedBefore(t uint64) error {
	if t <= c.flushedBefore {
		return nil
	}
	if err := c.objs.FlushedBeforeNs.Set(t); err != nil {
		return fmt.Errorf("set kernel flush time: %w", err)
	}
	c.flushedBefore = t
	return nil
}

// Stats sums the kernel counters over CPUs.
func (c *Cache) Stats() (server.KernelStats, error) {
	counts, err := c.counters()
	if err != nil {
		return server.KernelStats{}, err
	}
	return server.KernelStats{
		Requests:  counts[xdpcacheCounterCNT_REQUESTS],
		Hits:      counts[xdpcacheCounterCNT_HITS],
		BytesSent: counts[xdpcacheCounterCNT_BYTES],
	}, nil
}

// counters reads every counter, summed over CPUs.
func (c *Cache) counters() ([xdpcacheCounterCNT_MAX]uint64, error) {
	var out [xdpcacheCounterCNT_MAX]uint64
	var perCPU []uint64
	for i := range out {
		if err := c.objs.Counters.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("read kernel counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			out[i] += v
		}
	}
	return out, nil
}

// Len is the number of keys in the kernel cache and the bytes they are charged.
func (c *Cache) Len() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.used
}

// Close detaches the program and releases maps and programs.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	if c.link != nil {
		if err := c.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach xdp: %w", err))
		}
	}
	if c.statsCloser != nil {
		errs = append(errs, c.statsCloser.Close())
	}
	if err := c.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close xdpcache objects: %w", err))
	}
	c.rest.Close()
	return errors.Join(errs...)
}
