// Package bpf is the kernel half of xdpcache: an XDP program that answers memcached UDP get/gets
// hits from BPF maps, the loader that attaches it, and the Go API (Cache) through which the
// server fills and invalidates the kernel copy.
//
// # How the kernel cache stays exact, consistent and untorn
//
// Entries are immutable. An entry holds the server's own reply bytes for one item
// ("VALUE <key> <flags> <bytes>\r\n<value>\r\n", built with internal/protocol, then "END\r\n"),
// the gets header with the " <cas>" text gets inserts, the precomputed checksum sums of those
// pieces, the fill time and the expiry (CLOCK_MONOTONIC ns). It lives in a chunk of the arena, an
// ARRAY map of 64 KiB pages that userspace mmaps and writes in place; a page serves one size class
// (chunks of 96 to 2048 bytes, about 1.4x apart) at a time, and returns to the common pool when
// all its chunks are free, as memcached's slabs do. The index is an ARRAY of 4x MaxEntries slots
// (rounded up to a power of two); a key lives in one of two slots chosen by its 64-bit hash, and
// the slot holds the full hash and the arena offset of the key's entry (when both are taken, one
// occupant moves to its other slot, cuckoo-style, before any is evicted). Every lookup on the hit
// path is therefore an ARRAY lookup, which the verifier inlines.
//
//   - Fill (Offer): write the new entry into a free chunk, then point the index slot at it (atomic
//     stores into the mmapped index, which the program reads word by word). A chunk is handed
//     out again only retireAfter after its entry left the index, so a reader sees the old entry
//     or the new one, whole.
//   - Invalidate: clear the index slot, one atomic store (a full barrier). Once it returns, no
//     lookup can reach the entry, so no packet processed afterwards is answered from it. The
//     chunk is freed at least retireAfter later.
//   - Move (freeSlot): copy a slot into the entry's other, empty slot, then clear the first; the
//     entry is reachable through one or both throughout, and Invalidate clears the one it is in.
//   - Exact keys: the program compares the request key with the key inside the entry, and the
//     entry's own recorded offset with the one it came from; a hash collision, or a slot read
//     while being rewritten, is a miss, never another key's value. Userspace keeps one key per hash.
//   - Flush(deadline): one aligned 8-byte store into the program's mmapped .bss raises
//     flushed_before_ns; entries filled before it are dead. A future deadline is applied at once
//     (conservative: the kernel stops serving those entries early and the server answers them).
//   - Expiry: the program treats now >= expires_ns as a miss; expiries are converted from wall
//     time with a small margin so the kernel gives up on an item before the server does.
//
// The program answers in two passes: the first finds and checks every key of the request and
// sums the reply's length and checksum without touching the packet; only if all keys are
// servable, the reply fits one datagram and the source may be answered does the second pass
// resize the packet and copy each entry into it with word stores (one piece per get entry, END
// included for the last; two for a gets entry, around its CAS unique).
//
// # Memory
//
// Options.MaxBytes is the budget userspace charges: each entry costs its chunk (the smallest
// class that holds it, so memory is proportional to item size within a factor of 1.4) plus its
// share of the index. The arena is allocated when the program loads, sized to the budget plus
// one page per class and a quarter of the budget for entries waiting out retireAfter; when those
// run out, fills are skipped until retirement catches up.
//
// # Not a reflector
//
// The program answers only sources in an allow-list (an LPM trie: Options.AllowSources, or, when
// that is nil, loopback and the subnets of the interface it is attached to),
// caps each reply at Options.MaxAmplification times its request (UDP payload bytes, the bandwidth
// amplification factor of the literature), and rate-limits replies per source with GCRA (one
// timestamp per source in an LRU map). Anything refused passes to the server, which applies the
// same rules.
//
// Userspace holds the budget (bytes and entries) and evicts with CLOCK: the program sets a
// referenced flag in the index slot on every hit, and the eviction hand reads and clears it.
// Admission decides which offered items go in at all (always, or after repeated offers).
package bpf

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/kernelcache"
)

var (
	_ kernelcache.Cache   = (*Cache)(nil)
	_ kernelcache.Fetches = (*Cache)(nil)
)

// Options configure the kernel cache.
type Options struct {
	Port       uint16 // UDP port the program answers (the server's -U); 0 means 11211
	MaxBytes   int64  // kernel cache budget, bytes of entries; 0 means 64 MiB
	MaxEntries int    // upper bound on entries; 0 means 65536
	ReplyDSCP  uint8  // DSCP set on kernel replies; 0 = off
	Admission  string // "always" | "frequency" (default)
	MTU        int    // interface MTU, caps reply size; 0 = 1500

	// AllowSources are the client prefixes the kernel answers, exactly (the server's UDP guard
	// applies the same list). nil means loopback (127.0.0.0/8 and ::1) and the subnets of the
	// interface the program is attached to; an empty non-nil slice answers no one.
	AllowSources []netip.Prefix
	// RatePerSource caps kernel replies per second to one source address; 0 is unlimited.
	RatePerSource float64
	// Burst is how many replies a source may get at once above its rate; 0 means one second's
	// worth (at least 1). Used only with RatePerSource.
	Burst int
	// MaxAmplification caps a reply's UDP payload at this many times the request's; 0 means
	// DefaultMaxAmplification. Over it, the request passes to the server.
	MaxAmplification float64
	// HitTimeSample is how many requests reaching a program share one timing for
	// xdpcache_kernel_hit_duration_seconds: a power of two, 1 times every one; 0 means
	// DefaultHitTimeSample.
	HitTimeSample int
}

// DefaultMaxAmplification is the reply-to-request size cap (UDP payloads, the bandwidth
// amplification factor). memcached reflection attacks reached 10,000x and more because one small
// get fetched megabytes; a one-datagram reply is at most 1400 bytes, and the shortest get
// ("get k", 15 bytes with its frame header) could draw 93x. 100x lets every one-datagram reply
// through for any get an allowed client sends, so ordinary values are served over UDP; what is
// refused is the multi-datagram reply of a large value (the server answers it with a short
// SERVER_ERROR that says to use TCP). docs/SECURITY.md has the reasoning.
const DefaultMaxAmplification = 100

// Errors.
var (
	ErrClosed  = errors.New("bpf: cache closed")
	ErrOptions = errors.New("bpf: invalid options")
)

const (
	// retireAfter is how long an entry's chunk stays untouched after leaving the index. A program
	// run takes microseconds; a second is a wide margin.
	retireAfter = time.Second
	// expiryMargin makes the kernel stop serving an item slightly before the server expires it.
	// The program tests expiry against the coarse clock, which lags CLOCK_MONOTONIC by up to one
	// tick: 10 ms at HZ=100, the slowest tick a kernel is built with.
	expiryMargin = 20 * time.Millisecond
	// overheadBytes is each entry's share of the index: four 16-byte slots per entry.
	overheadBytes = 64
	// indexSlotsPerEntry oversizes the two-choice index so that both of a key's slots are
	// taken by other keys rarely (under 1 in 16 at full occupancy), and that one of those keys
	// can then nearly always move to its own other slot (freeSlot).
	indexSlotsPerEntry = 4
	// sourceStates bounds the per-source rate limiter's LRU map.
	sourceStates = 65536
	// pageStride is one arena value: a page of chunks and the verifier's guard (cache_maps.h).
	pageStride = pageBytes + chunkMax
)

// Churn counts what became of the offers the kernel cache was made and of its entries: what sizing
// and admission experiments look at besides the hit ratio.
type Churn struct {
	Fills        uint64 // entries installed: new keys and new versions of cached ones
	EvictedSpace uint64 // live entries dropped for room: the byte or entry limit (CLOCK victim)
	// EvictedIndex counts live entries dropped because both of a new key's index slots were
	// taken and neither occupant could move.
	EvictedIndex     uint64
	RefusedFrequency uint64 // new keys the frequency policy has not seen often enough
	RefusedVictim    uint64 // new keys not asked for more often than the entry they would evict
	Moved            uint64 // entries moved to their other index slot to make room (no loss)
	// FillsSkipped counts offers that would have been installed but found every chunk of their
	// size live or waiting out retireAfter: churn faster than the arena's spare room allows.
	FillsSkipped uint64
}

// Churn returns the cache's churn counters since it was created.
func (c *Cache) Churn() Churn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.churn
}

// kentry is userspace's record of one key in the kernel cache.
type kentry struct {
	key     string
	hash    uint64
	class   int
	loc     uint32 // arena offset of its entry
	slot    uint32 // index slot
	cost    int64
	flags   uint32
	cas     uint64
	size    int
	expires time.Time
	filled  uint64
	// metaState: the item carried meta-protocol state when installed (mg left to the server)
	metaState bool
	ring      int // position in Cache.ring
}

type retired struct {
	loc uint32
	at  time.Time
}

// Cache is the kernel cache: the loaded program, its maps and userspace's bookkeeping. It
// implements kernelcache.Cache and is safe for concurrent use.
type Cache struct {
	opts        Options
	retireAfter time.Duration // see the constant; tests of sequential runs shorten it
	objs        xdpcacheObjects
	arena       *ebpf.Memory
	index       *index
	maxReply    int // largest UDP payload a reply may have
	indexMask   uint32

	mu            sync.Mutex
	closed        bool
	policy        admission
	slabs         *slabs
	entries       map[string]*kentry
	byHash        map[uint64]*kentry
	slots         []*kentry // index slot owners
	ring          []*kentry // CLOCK order
	hand          int
	fetchNext     int // where TakeFetched resumes in ring
	used          int64
	retiring      []retired
	flushedBefore uint64
	churn         Churn
	allowed       int    // prefixes in the allow-list
	allowGen      uint32 // allow_gen in the program's .bss
	link          link.Link
	tcLink        link.Link // the TC program's, on the same interface as link
	attachedTo    string    // interface of link
	attachedMode  Mode      // mode of link
	statsCloser   io.Closer
	created       time.Time        // when the program's counters started
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
	if o.MaxAmplification == 0 {
		o.MaxAmplification = DefaultMaxAmplification
	}
	if o.HitTimeSample == 0 {
		o.HitTimeSample = DefaultHitTimeSample
	}
	if o.RatePerSource > 0 && o.Burst == 0 {
		o.Burst = max(1, int(o.RatePerSource))
	}
	switch {
	case o.MaxBytes < 0 || o.MaxEntries < 0:
		return fmt.Errorf("%w: negative size", ErrOptions)
	case o.MaxEntries > 1<<26:
		return fmt.Errorf("%w: %d entries, at most %d", ErrOptions, o.MaxEntries, 1<<26)
	case o.ReplyDSCP > 63:
		return fmt.Errorf("%w: DSCP %d over 63", ErrOptions, o.ReplyDSCP)
	case o.MTU < 576 || o.MTU > 65535:
		return fmt.Errorf("%w: MTU %d", ErrOptions, o.MTU)
	case !(o.MaxAmplification >= 1 && o.MaxAmplification <= 1e6):
		return fmt.Errorf("%w: amplification cap %v, want 1 to 1e6", ErrOptions, o.MaxAmplification)
	case !(o.RatePerSource >= 0 && o.RatePerSource <= 1e9):
		return fmt.Errorf("%w: rate %v per source, want 0 to 1e9", ErrOptions, o.RatePerSource)
	case o.Burst < 0 || o.Burst > 1<<20:
		return fmt.Errorf("%w: burst %d", ErrOptions, o.Burst)
	case o.HitTimeSample < 1 || o.HitTimeSample > 1<<20 || o.HitTimeSample&(o.HitTimeSample-1) != 0:
		return fmt.Errorf("%w: hit time sample %d, want a power of two up to 2^20", ErrOptions, o.HitTimeSample)
	}
	for _, p := range o.AllowSources {
		if !p.IsValid() {
			return fmt.Errorf("%w: allow-list prefix %v", ErrOptions, p)
		}
	}
	return nil
}

// arenaPages is the arena's size in pages for opts: the budget (capped at what MaxEntries of the
// largest chunk need), one page per class, and a quarter of the budget for retiring chunks.
func arenaPages(o Options) int {
	budget := min(o.MaxBytes, int64(o.MaxEntries)*chunkMax)
	pages := int((budget + pageBytes - 1) / pageBytes)
	return pages + numClasses + max(pages/4, 2)
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
	indexSize := 1 << bits.Len(uint(max(opts.MaxEntries*indexSlotsPerEntry, 64)-1))
	var interval, burst uint64
	if opts.RatePerSource > 0 {
		interval = max(uint64(math.Round(1e9/opts.RatePerSource)), 1)
		burst = uint64(opts.Burst-1) * interval
	}
	for name, v := range map[string]any{
		"cfg_port":        opts.Port,
		"cfg_reply_dscp":  opts.ReplyDSCP,
		"cfg_mtu":         uint32(opts.MTU),
		"cfg_index_mask":  uint32(indexSize - 1),
		"cfg_max_amp_x16": uint32(min(math.Round(opts.MaxAmplification*16), math.MaxUint32)),
		"cfg_interval_ns": interval,
		"cfg_burst_ns":    burst,

		"cfg_hit_time_mask": uint32(opts.HitTimeSample - 1),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	pages := arenaPages(opts)
	spec.Maps["arena"].MaxEntries = uint32(pages)
	spec.Maps["index_map"].MaxEntries = uint32(indexSize)
	spec.Maps["source_tat"].MaxEntries = sourceStates
	// Room for loopback, the configured prefixes and an interface's subnets at Attach.
	spec.Maps["allow_sources"].MaxEntries = uint32(len(opts.AllowSources) + 2 + 64)

	c := &Cache{
		opts:        opts,
		retireAfter: retireAfter,
		policy:      policy,
		slabs:       newSlabs(pages),
		entries:     make(map[string]*kentry),
		byHash:      make(map[uint64]*kentry),
		slots:       make([]*kentry, indexSize),
		indexMask:   uint32(indexSize - 1),
		maxReply:    min(protocol.MaxDatagram, opts.MTU-20-8),
		allowGen:    1,
		created:     time.Now(),
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("load xdpcache: %w", verifierDetail(err))
	}
	c.rest = coll
	if err := coll.Assign(&c.objs); err != nil {
		coll.Close()
		return nil, fmt.Errorf("assign xdpcache objects: %w", err)
	}
	if c.arena, err = c.objs.Arena.Memory(); err != nil {
		c.closeObjects()
		return nil, fmt.Errorf("map kernel cache arena: %w", err)
	}
	if c.index, err = mapIndex(c.objs.IndexMap); err != nil {
		c.closeObjects()
		return nil, err
	}
	// The same list the server's UDP guard applies: exactly the configured one, or by default
	// loopback and (at Attach) the interface's subnets.
	allow := opts.AllowSources
	if allow == nil {
		allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if err := c.allow(allow); err != nil {
		c.closeObjects()
		return nil, err
	}
	return c, nil
}

func (c *Cache) closeObjects() {
	c.index.close()
	c.objs.Close()
	c.rest.Close()
}

// allowKey is the LPM key of prefix p: IPv4 as IPv4-mapped IPv6.
func allowKey(p netip.Prefix) xdpcacheAllowKey {
	p = p.Masked()
	a, bits := p.Addr(), p.Bits()
	if a.Is4() {
		a, bits = netip.AddrFrom16(a.As16()), bits+96
	} else if a.Is4In6() && bits < 96 {
		bits = 96 // a v4-mapped prefix covers only the v4-mapped range
	}
	return xdpcacheAllowKey{Prefixlen: uint32(bits), Addr: a.As16()}
}

// allow adds prefixes to the kernel allow-list.
func (c *Cache) allow(prefixes []netip.Prefix) error {
	one := uint8(1)
	for _, p := range prefixes {
		k := allowKey(p)
		if err := c.objs.AllowSources.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("allow source %v: %w", p, err)
		}
		c.allowed++
	}
	// The program caches verdicts per source; a new generation drops them all.
	c.allowGen++
	if err := c.objs.AllowGen.Set(c.allowGen); err != nil {
		return fmt.Errorf("set allow-list generation: %w", err)
	}
	return nil
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

// slotsOf are the two index slots a hash may live in, as the program computes them.
func (c *Cache) slotsOf(h uint64) (uint32, uint32) {
	return uint32(h) & c.indexMask, uint32(h>>32) & c.indexMask
}

// Offer applies the admission policy and may copy it into the kernel. Items the program cannot
// serve (a key with a space, \r or \n, or too long; a reply over one datagram) are ignored.
func (c *Cache) Offer(it kernelcache.Item) error { return c.offer(it, true) }

// Fill installs it as Offer does, but without the admission policy: for warming a new cache with
// the items an old one held (a takeover). The caller holds the key's store lock, as for Offer.
func (c *Cache) Fill(it kernelcache.Item) error { return c.offer(it, false) }

// offer is Offer, or Fill when admit is false.
func (c *Cache) offer(it kernelcache.Item, admit bool) error {
	if !servableKey(it.Key) {
		return nil
	}
	// Key and value alone over the largest reply: not servable, and not worth encoding (a copy
	// and a checksum of the whole value) on every UDP hit of a large item.
	if len(it.Key)+len(it.Value) > c.maxReply {
		return nil
	}
	hash := keyHash(it.Key)
	// Most offers of a busy server are refused (already current, or not admitted): decide that
	// before encoding, which copies and sums the whole value. The admission decision is made
	// once, here; what changed while encoding is checked again below.
	if admitted, err := c.wantOffer(it, hash, admit); !admitted || err != nil {
		return err
	}
	enc := encode(it.Key, it.Flags, it.Value, it.CAS)
	class := classFor(enc.chunkLen())
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
		if c.current(old, it) {
			return nil // installed meanwhile
		}
	} else if c.byHash[hash] != nil {
		return nil // another key holds this hash; keep it
	}
	cost := int64(chunkSizes[class] + overheadBytes)
	if cost > c.opts.MaxBytes || c.opts.MaxEntries == 0 {
		if old != nil {
			c.invalidateRecord(old)
		}
		return nil
	}
	// The chunk first: evicting frees none (an evicted entry's chunk waits out retireAfter), so
	// when there is no chunk to take, evicting for room would only lose entries.
	loc, ok := c.slabs.alloc(class)
	if !ok {
		// Every chunk is live or retiring: skip this fill until retirement catches up.
		c.churn.FillsSkipped++
		if old != nil {
			c.invalidateRecord(old)
		}
		return nil
	}
	if old != nil {
		// Replacing frees old's budget once the index points elsewhere; count it now.
		c.removeRecord(old)
	}
	for len(c.ring) > 0 && (c.used+cost > c.opts.MaxBytes || len(c.ring) >= c.opts.MaxEntries) {
		v := c.victim()
		if admit && old == nil && c.unflushed(v) && !c.policy.prefer(hash, v.hash) {
			c.churn.RefusedVictim++
			c.slabs.release(loc)
			return nil // the victim is asked for at least as often: keep it
		}
		c.evict(v, &c.churn.EvictedSpace)
	}
	if _, err := c.arena.WriteAt(enc.chunk(len(it.Key), loc, mono, expires, it.MetaState), int64(loc>>pageShift)*pageStride+int64(loc&(pageBytes-1))); err != nil {
		c.slabs.release(loc) // never reachable
		if old != nil {
			c.dropFromIndex(old)
		}
		return fmt.Errorf("write kernel entry %q: %w", it.Key, err)
	}

	var slot uint32
	if old != nil {
		slot = old.slot
	} else {
		slot = c.freeSlot(hash)
	}
	e := &kentry{
		key: it.Key, hash: hash, class: class, loc: loc, slot: slot, cost: cost,
		flags: it.Flags, cas: it.CAS, size: len(it.Value), expires: it.Expires, filled: mono,
		metaState: it.MetaState,
	}
	c.index.set(slot, hash, loc)
	if old != nil {
		c.retire(old.loc, wall) // the index no longer reaches it
	}
	c.addRecord(e)
	c.churn.Fills++
	return nil
}

// freeSlot returns one of hash's two index slots. When both are taken it moves either occupant
// to that occupant's other slot if it is free (one cuckoo step), and only when neither can move
// evicts one (the unreferenced one if either is).
func (c *Cache) freeSlot(hash uint64) uint32 {
	s1, s2 := c.slotsOf(hash)
	if c.slots[s1] == nil {
		return s1
	}
	if c.slots[s2] == nil {
		return s2
	}
	if c.moveToOtherSlot(c.slots[s1]) {
		return s1
	}
	if c.moveToOtherSlot(c.slots[s2]) {
		return s2
	}
	victim := s1
	if ref, _ := c.index.referenced(s1, c.slots[s1].loc); ref {
		victim = s2
	}
	c.evict(c.slots[victim], &c.churn.EvictedIndex)
	return victim
}

// evict drops e to make room, counting it in count unless a flush had already killed it.
func (c *Cache) evict(e *kentry, count *uint64) {
	if c.unflushed(e) {
		*count++
	}
	c.invalidateRecord(e)
}

// unflushed reports whether e was filled after the last flush, so the program may still serve it.
func (c *Cache) unflushed(e *kentry) bool { return e.filled >= c.flushedBefore }

// moveToOtherSlot moves e to the other of its two index slots if that one is empty, and reports
// whether it did. The program finds e through one slot or the other throughout (index.move).
func (c *Cache) moveToOtherSlot(e *kentry) bool {
	a, b := c.slotsOf(e.hash)
	to := a
	if to == e.slot {
		to = b
	}
	if to == e.slot || c.slots[to] != nil {
		return false
	}
	c.index.move(e.slot, to)
	c.slots[e.slot] = nil
	c.slots[to] = e
	e.slot = to
	c.churn.Moved++
	return true
}

// addRecord and removeRecord keep entries, byHash, slots, ring and used in step.
func (c *Cache) addRecord(e *kentry) {
	c.entries[e.key] = e
	c.byHash[e.hash] = e
	c.slots[e.slot] = e
	e.ring = len(c.ring)
	c.ring = append(c.ring, e)
	c.used += e.cost
}

func (c *Cache) removeRecord(e *kentry) {
	delete(c.entries, e.key)
	delete(c.byHash, e.hash)
	if c.slots[e.slot] == e {
		c.slots[e.slot] = nil
	}
	last := len(c.ring) - 1
	c.ring[e.ring] = c.ring[last]
	c.ring[e.ring].ring = e.ring
	c.ring[last] = nil
	c.ring = c.ring[:last]
	if c.hand >= len(c.ring) {
		c.hand = 0
	}
	c.used -= e.cost
}

// clearSlot makes e unreachable: one atomic store empties its index slot.
func (c *Cache) clearSlot(e *kentry) {
	c.index.clear(e.slot)
}

// dropFromIndex makes e unreachable and schedules its chunk's release. Used when e's record is
// already gone from the bookkeeping.
func (c *Cache) dropFromIndex(e *kentry) {
	c.clearSlot(e)
	c.retire(e.loc, time.Now())
}

func (c *Cache) retire(loc uint32, now time.Time) {
	c.retiring = append(c.retiring, retired{loc: loc, at: now})
	if c.retireAfter == 0 {
		c.reap(now)
	}
}

// reap releases the chunks of entries that left the index at least retireAfter ago.
func (c *Cache) reap(now time.Time) {
	n := 0
	for _, r := range c.retiring {
		if now.Sub(r.at) < c.retireAfter {
			break
		}
		c.slabs.release(r.loc)
		n++
	}
	c.retiring = c.retiring[n:]
}

// victim returns the entry to evict next: the first the CLOCK hand finds unreferenced (or dead
// after a flush), clearing referenced flags as it passes. Bounded: after two sweeps it takes the
// entry where it stands. The ring must not be empty.
func (c *Cache) victim() *kentry {
	for step := 0; step < 2*len(c.ring); step++ {
		e := c.ring[c.hand]
		if !c.unflushed(e) {
			return e
		}
		ref, live := c.index.referenced(e.slot, e.loc)
		if !live || !ref {
			return e
		}
		c.index.clearReferenced(e.slot, e.loc)
		c.hand = (c.hand + 1) % len(c.ring)
	}
	return c.ring[c.hand]
}

// wantOffer reports whether an offer of it should be encoded and installed: not when the kernel
// already holds this version, when another key holds its hash, or when the admission policy
// refuses a new key.
func (c *Cache) wantOffer(it kernelcache.Item, hash uint64, admit bool) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, ErrClosed
	}
	if old := c.entries[it.Key]; old != nil {
		return !c.current(old, it), nil
	}
	if c.byHash[hash] != nil {
		return false, nil
	}
	if admit && !c.policy.admit(hash) {
		c.churn.RefusedFrequency++
		return false, nil
	}
	return true, nil
}

// current reports whether e holds the version of it: same CAS, flags, size and expiry, filled
// after the last flush.
func (c *Cache) current(e *kentry, it kernelcache.Item) bool {
	return e.cas == it.CAS && e.flags == it.Flags && e.size == len(it.Value) &&
		e.expires.Equal(it.Expires) && e.metaState == it.MetaState && c.unflushed(e)
}

// FetchedBatch is how many entries one TakeFetched call examines: all of them for caches of up to
// this many entries, a rotating part of larger ones (each entry then every few calls).
const FetchedBatch = 1 << 18

// TakeFetched calls fn with the key of each entry the program has served since the last call
// that examined it (kernelcache.Fetches), and clears those marks. Without it the store would see
// no fetches of a key the kernel answers, and evict the hottest keys first. fn runs after the
// cache's lock is released, so it may take the store's locks (whose hook calls Invalidate). The
// ring may change between calls, so an entry can be skipped once or seen twice: the marks, not
// the walk, carry the information, and a skipped mark is taken on a later call.
func (c *Cache) TakeFetched(fn func(key string)) {
	var keys []string
	total := -1 // entries this call examines, fixed at the first chunk
	for done := 0; total < 0 || done < total; {
		// A chunk at a time: Invalidate, on every write's path, waits for the lock at most
		// one chunk's walk, not the whole batch's.
		c.mu.Lock()
		if c.closed || len(c.ring) == 0 {
			c.mu.Unlock()
			break
		}
		if total < 0 {
			total = min(len(c.ring), FetchedBatch)
		}
		n := min(total-done, fetchedChunk)
		for range n {
			if c.fetchNext >= len(c.ring) {
				c.fetchNext = 0
			}
			e := c.ring[c.fetchNext]
			c.fetchNext++
			if c.index.takeFetched(e.slot, e.loc) {
				keys = append(keys, e.key)
			}
		}
		done += n
		c.mu.Unlock()
	}
	for _, k := range keys {
		fn(k)
	}
}

// fetchedChunk is how many entries TakeFetched examines per hold of the cache's lock.
const fetchedChunk = 4096

// invalidateRecord removes e from the index (or flushes everything if that fails) and from the
// bookkeeping. It never leaves e servable.
func (c *Cache) invalidateRecord(e *kentry) {
	c.removeRecord(e)
	c.clearSlot(e)
	c.retire(e.loc, time.Now())
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
	if e := c.entries[key]; e != nil {
		c.invalidateRecord(e)
	}
	return nil
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

// flushNow kills every entry filled until now; the fallback when an index update fails.
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
func (c *Cache) Stats() (kernelcache.Stats, error) {
	counts, err := c.counters()
	if err != nil {
		return kernelcache.Stats{}, err
	}
	churn := c.Churn()
	return kernelcache.Stats{
		Requests:          counts[xdpcacheCounterCNT_REQUESTS],
		Hits:              counts[xdpcacheCounterCNT_HITS],
		BytesSent:         counts[xdpcacheCounterCNT_BYTES],
		Fills:             churn.Fills,
		FillsSkipped:      churn.FillsSkipped,
		Evictions:         churn.EvictedSpace + churn.EvictedIndex,
		AdmissionsRefused: churn.RefusedFrequency + churn.RefusedVictim,
	}, nil
}

// TCHits is how many keys the TC program served: replies the XDP frame had no room for. They
// are counted in Stats' Hits too.
func (c *Cache) TCHits() (uint64, error) {
	counts, err := c.counters()
	if err != nil {
		return 0, err
	}
	return counts[xdpcacheCounterCNT_TC_HITS], nil
}

// counters reads every counter, summed over CPUs.
func (c *Cache) counters() ([xdpcacheCounterCNT_MAX]uint64, error) {
	var out [xdpcacheCounterCNT_MAX]uint64
	var perCPU []xdpcacheCounterSet
	if err := c.objs.Counters.Lookup(uint32(0), &perCPU); err != nil {
		return out, fmt.Errorf("read kernel counters: %w", err)
	}
	for _, cs := range perCPU {
		for i := range out {
			out[i] += cs.N[i]
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
	if c.tcLink != nil {
		if err := c.tcLink.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach tc: %w", err))
		}
	}
	if c.statsCloser != nil {
		errs = append(errs, c.statsCloser.Close())
	}
	if err := c.index.close(); err != nil {
		errs = append(errs, fmt.Errorf("unmap kernel cache index: %w", err))
	}
	if err := c.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close xdpcache objects: %w", err))
	}
	c.rest.Close()
	return errors.Join(errs...)
}
