package server

// Upstream mode: the server fronts real memcached servers (Config.Upstreams), which stay the
// caches of record. The store becomes a near cache of what they hold, and the kernel cache,
// filled from the store as usual, a copy of that.
//
// Reads (get, gets, mg) are served from a live local item; a miss is fetched from the key's
// upstream with `mg <key> v f t c` (one pipelined round trip per upstream for a multi-key get),
// installed locally with the upstream's flags and CAS, and answered. A local item lives at most
// KernelMaxAge, and never past the upstream's own TTL (less a second for its whole-second clock),
// so a write that goes to an upstream directly, past us, is seen through us within KernelMaxAge.
// Items expire on whole seconds: a copy lives between KernelMaxAge-1s and KernelMaxAge.
//
// Writes (storage commands, incr, decr, delete, touch, gat, ms, md, ma, and mg with N or T) are
// forwarded to the key's upstream, and its reply, memcached's own bytes, is the reply. The write
// is acknowledged only after the upstream acknowledged it and the local item, and with it the
// kernel copy (the store's hook), is gone (docs/DESIGN.md invariant 1). A fill racing a write must not
// install the older value after that: every key hashes to a write generation, which a write bumps
// and then drops the local item, both before forwarding and again after the upstream's reply. A
// fill reads the generation before fetching and installs, under the key's store lock, only if it
// is unchanged. A fill that read the old value was answered before the upstream applied the
// write, so before the write's second bump: either it installs before that bump and the drop
// after it removes the item, or it sees the bumped generation and installs nothing. flush_all
// has one generation of its own, bumped the same way around forwarding it to every upstream.
//
// A request for a key whose upstream is down fails at once with
// "SERVER_ERROR upstream <addr> unavailable"; a multi-key get fails whole if one of the upstreams
// it needs is down. Keys are never moved to another upstream (see package upstream).
//
// mg is answered locally only with flags whose meaning a near copy keeps (v, f, c, s, k, O, q, b,
// u); flags about the upstream's item state (t, h, l, N, R, T, E) are forwarded. stats, version,
// verbosity and mn are local; me is forwarded.

import (
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/upstream"
)

// DefaultKernelMaxAge is how long a value fetched from an upstream is served locally and by the
// kernel when Config.KernelMaxAge is 0.
const DefaultKernelMaxAge = time.Second

// genStripes is how many write generations keys hash to. Two keys sharing one only cost an
// occasional fill that is not installed.
const genStripes = 4096

// upstreamBackend is the backend of upstream mode.
type upstreamBackend struct {
	s       *Server
	cluster *upstream.Cluster
	maxAge  time.Duration
	seed    maphash.Seed
	gens    [genStripes]atomic.Uint64
	// flushGen is flush_all's generation: it invalidates fills of every key.
	flushGen atomic.Uint64
	// Counters for `stats`: keys fetched from upstreams, fills installed, fills dropped because a
	// write or flush raced them.
	fetches, fills, fillRaces atomic.Uint64
}

func newUpstreamBackend(s *Server, cfg Config) (*upstreamBackend, error) {
	maxAge := cfg.KernelMaxAge
	switch {
	case maxAge == 0:
		maxAge = DefaultKernelMaxAge
	case maxAge < time.Second:
		// Item expiry has whole-second resolution: below a second nothing could be cached.
		return nil, errors.New("check config: kernel max age below 1s")
	}
	cl, err := upstream.New(upstream.Config{
		Addrs:       cfg.Upstreams,
		DialTimeout: cfg.UpstreamDialTimeout,
		Timeout:     cfg.UpstreamTimeout,
		// An upstream value must fit in our store to be cached, but is served even if it does not.
		MaxValueSize: max(int(cfg.MaxItemSize), upstream.DefaultMaxValueSize),
	})
	if err != nil {
		return nil, err
	}
	return &upstreamBackend{s: s, cluster: cl, maxAge: maxAge, seed: maphash.MakeSeed()}, nil
}

// snapshot is what a fill records before fetching: key's write generation and the flush one.
type snapshot struct{ gen, flush uint64 }

func (u *upstreamBackend) stripe(key []byte) *atomic.Uint64 {
	return &u.gens[maphash.Bytes(u.seed, key)%genStripes]
}

func (u *upstreamBackend) snapshot(key []byte) snapshot {
	return snapshot{u.stripe(key).Load(), u.flushGen.Load()}
}

// invalidate bumps key's write generation, then drops the local item; the store's hook drops
// the kernel copy under the key's lock.
func (u *upstreamBackend) invalidate(key []byte) {
	u.stripe(key).Add(1)
	u.s.drop(key)
}

// expiry is a fetched item's local expiry: at most maxAge from now, and a second before the
// upstream's TTL runs out (it counts whole seconds on its own clock). false: do not cache it.
func (u *upstreamBackend) expiry(now time.Time, ttl int64) (int64, bool) {
	exp := now.Add(u.maxAge).Unix()
	if ttl >= 0 {
		exp = min(exp, now.Unix()+ttl-1)
	}
	return exp, exp > now.Unix()
}

// install stores a fetched value locally, with the upstream's CAS, unless a write or flush_all
// happened since snap was taken (checked under the key's lock, which writes' drops take too).
func (u *upstreamBackend) install(key []byte, snap snapshot, v upstream.Value) {
	exp, ok := u.expiry(u.s.store.Now(), v.TTL)
	if !ok {
		return
	}
	raced := false
	_, _ = u.s.store.Do(string(key), func(*cache.Item) (*cache.Item, cache.Op) {
		if u.snapshot(key) != snap {
			raced = true
			return nil, cache.Keep
		}
		return &cache.Item{Value: v.Value, Flags: v.Flags, Exptime: exp, CAS: v.CAS}, cache.Install
	})
	if raced {
		u.fillRaces.Add(1)
	} else {
		u.fills.Add(1)
	}
}

// upError is the reply for a failed upstream request.
func upError(srv *upstream.Server, err error) string {
	if errors.Is(err, upstream.ErrProtocol) {
		return "SERVER_ERROR upstream " + srv.Addr() + " bad reply"
	}
	return "SERVER_ERROR upstream " + srv.Addr() + " unavailable"
}

// stats are the `stats` lines of upstream mode.
func (u *upstreamBackend) stats() []stat {
	up := 0
	for _, srv := range u.cluster.Servers() {
		if srv.Up() {
			up++
		}
	}
	return []stat{
		{"upstream_servers", strconv.Itoa(len(u.cluster.Servers()))},
		{"upstream_servers_up", strconv.Itoa(up)},
		{"upstream_fetches", u64(u.fetches.Load())},
		{"upstream_fills", u64(u.fills.Load())},
		{"upstream_fill_races", u64(u.fillRaces.Load())},
	}
}

// close closes the connections to the upstreams.
func (u *upstreamBackend) close() error {
	if err := u.cluster.Close(); err != nil {
		return fmt.Errorf("close upstreams: %w", err)
	}
	return nil
}

// maxItemSize is 0: the upstream holds a storage command to its own item size limit.
func (*upstreamBackend) maxItemSize() int64 { return 0 }

// appendTokens appends the request line's tokens, minus those skip rejects, and a line end:
// the request as forwarded.
func appendTokens(dst []byte, t *protocol.Tokens, skip func(i int, tok []byte) bool) []byte {
	first := true
	for i := 0; i < t.N; i++ {
		tok := t.Tok(i)
		if skip != nil && skip(i, tok) {
			continue
		}
		if !first {
			dst = append(dst, ' ')
		}
		first = false
		dst = append(dst, tok...)
	}
	if len(t.Rest) > 0 {
		dst = append(append(dst, ' '), t.Rest...)
	}
	return append(dst, "\r\n"...)
}

// withoutNoreply forwards a text request with its reply requested: we must see the upstream's
// acknowledgement before ours, and the client's noreply is applied to our reply instead.
func withoutNoreply(t *protocol.Tokens) func(int, []byte) bool {
	last := -1
	if t.NoReply() {
		last = t.N - 1
	}
	return func(i int, _ []byte) bool { return i == last }
}

// withoutQuiet drops a meta request's q flag, for the same reason.
func withoutQuiet(from int) func(int, []byte) bool {
	return func(i int, tok []byte) bool { return i >= from && len(tok) == 1 && tok[0] == 'q' }
}

// write forwards a write of key: the local copy goes before and after, and the reply is
// returned only after both. On failure the error reply has been set (noreply suppresses it for
// text commands, as memcached's out_string does; meta errors always show).
func (u *upstreamBackend) write(c *session, key, req []byte, meta bool) ([]byte, bool) {
	srv := u.cluster.Pick(key)
	u.invalidate(key)
	replies, err := srv.Do(req, 1)
	u.invalidate(key)
	if err != nil {
		c.status = statusServerError
		if meta {
			c.replyErr(upError(srv, err))
		} else {
			c.reply(upError(srv, err))
		}
		return nil, false
	}
	return replies[0], true
}

// replyRaw appends an upstream's reply unless the client asked for none.
func (c *session) replyRaw(r []byte) {
	if c.noreply {
		c.noreply = false
		return
	}
	c.out = append(c.out, r...)
}

// statusOf maps an upstream reply to our metrics status.
func statusOf(r []byte, hd statusID) statusID {
	word := r
	if i := bytes.IndexAny(r, " \r\n"); i >= 0 {
		word = r[:i]
	}
	switch string(word) {
	case "STORED":
		return statusStored
	case "NOT_STORED", "NS":
		return statusNotStored
	case "EXISTS", "EX":
		return statusExists
	case "NOT_FOUND", "NF", "EN":
		return statusNotFound
	case "DELETED":
		return statusDeleted
	case "TOUCHED":
		return statusTouched
	case "OK", "ME", "VA":
		return statusOK
	case "HD":
		return hd
	case "ERROR":
		return statusError
	case "CLIENT_ERROR":
		return statusClientError
	case "SERVER_ERROR":
		return statusServerError
	}
	if len(word) > 0 && word[0] >= '0' && word[0] <= '9' {
		return statusOK // incr/decr's new value
	}
	return statusServerError
}

// store forwards a storage command (set, add, replace, append, prepend, cas) whose line is in
// c.tok and whose data is r.value.
func (u *upstreamBackend) store(c *session, key []byte, sr storeReq) {
	s := u.s
	s.st.cmdSet.Add(1)
	req := appendTokens(nil, &c.tok, withoutNoreply(&c.tok))
	req = append(append(req, sr.value...), "\r\n"...)
	r, ok := u.write(c, key, req, false)
	if !ok {
		return
	}
	c.status = statusOf(r, statusStored)
	if sr.hasCAS {
		switch c.status {
		case statusStored:
			s.st.casHits.Add(1)
		case statusExists:
			s.st.casBadval.Add(1)
		case statusNotFound:
			s.st.casMisses.Add(1)
		}
	}
	c.replyRaw(r)
}

// arith forwards incr or decr.
func (u *upstreamBackend) arith(c *session, key []byte, r arithReq) {
	hit, miss := &u.s.st.incrHits, &u.s.st.incrMisses
	if !r.incr {
		hit, miss = &u.s.st.decrHits, &u.s.st.decrMisses
	}
	u.forwardCounted(c, key, statusOK, hit, miss)
}

// delete forwards delete.
func (u *upstreamBackend) delete(c *session, key []byte) {
	u.forwardCounted(c, key, statusDeleted, &u.s.st.deleteHits, &u.s.st.deleteMisses)
}

// touch forwards touch.
func (u *upstreamBackend) touch(c *session, key []byte, _ int64) {
	u.forwardCounted(c, key, statusTouched, &u.s.st.touchHits, &u.s.st.touchMisses)
}

// forwardCounted forwards the current command for key, replies with the upstream's bytes, and
// counts the outcome as memcached's stats do: a hit when the upstream answered done, a miss when it
// answered NOT_FOUND.
func (u *upstreamBackend) forwardCounted(c *session, key []byte, done statusID, hit, miss *atomic.Uint64) {
	r, ok := u.write(c, key, appendTokens(nil, &c.tok, withoutNoreply(&c.tok)), false)
	if !ok {
		return
	}
	c.status = statusOf(r, done)
	switch c.status {
	case done:
		hit.Add(1)
	case statusNotFound:
		miss.Add(1)
	}
	c.replyRaw(r)
}

// flushAll forwards flush_all to every upstream, then flushes the store (and with it the
// kernel cache). The local flush happens even if an upstream failed: dropping copies is safe.
func (u *upstreamBackend) flushAll(c *session, delay time.Duration) {
	req := appendTokens(nil, &c.tok, withoutNoreply(&c.tok))
	u.flushGen.Add(1)
	servers := u.cluster.Servers()
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Go(func() {
			r, err := srv.Do(req, 1)
			if err == nil && !bytes.HasPrefix(r[0], []byte("OK")) {
				err = errors.New(string(bytes.TrimSpace(r[0])))
			}
			errs[i] = err
		})
	}
	wg.Wait()
	u.flushGen.Add(1)
	u.s.flushAll(delay)
	for i, err := range errs {
		if err != nil {
			c.status = statusServerError
			c.reply(upError(servers[i], err))
			return
		}
	}
	c.status = statusOK
	c.reply("OK")
}

// upKey is one key of a multi-key get in upstream mode.
type upKey struct {
	key        []byte
	start, end int // its local hit's bytes in c.out
	hit        bool
	snap       snapshot
	val        upstream.Value
}

// upBatch is the keys of one get that one upstream must answer.
type upBatch struct {
	srv  *upstream.Server
	idx  []int // into the keys
	vals []upstream.Value
	err  error
}

// get runs get, gets, gat and gats in upstream mode. Local hits are answered locally; the
// other keys are fetched, one pipelined round trip per upstream, all upstreams at once. gat and
// gats change the upstream item's TTL, so they are writes: every key goes upstream.
func (u *upstreamBackend) get(c *session, r getReq) {
	withCAS, touch := r.withCAS, r.touch
	var touchTok []byte
	if touch {
		touchTok = c.tok.Tok(1)
	}
	keys := make([]upKey, len(c.keys))
	for i, key := range c.keys {
		if len(key) > protocol.MaxKeyLen {
			c.status = statusClientError
			c.reply(badFormat)
			return
		}
		keys[i].key = key
	}
	mark := len(c.out)
	var batches []*upBatch
	local := fetchReq{offer: c.udp}
	var res fetchResult
	for i := range keys {
		k := &keys[i]
		if !touch {
			k.start = len(c.out)
			if u.s.fetch(k.key, &local, &res); res.hit {
				k.hit = true
				c.appendValue(k.key, &res.item, withCAS)
			}
			k.end = len(c.out)
			if k.hit {
				continue
			}
			k.snap = u.snapshot(k.key)
		} else {
			u.invalidate(k.key)
		}
		srv := u.cluster.Pick(k.key)
		var b *upBatch
		for _, x := range batches {
			if x.srv == srv {
				b = x
			}
		}
		if b == nil {
			b = &upBatch{srv: srv}
			batches = append(batches, b)
		}
		b.idx = append(b.idx, i)
	}
	fetch := func(b *upBatch) {
		ks := make([][]byte, len(b.idx))
		for j, i := range b.idx {
			ks[j] = keys[i].key
		}
		b.vals, b.err = b.srv.Get(ks, touchTok)
	}
	if len(batches) == 1 {
		fetch(batches[0])
	} else if len(batches) > 1 {
		var wg sync.WaitGroup
		for _, b := range batches {
			wg.Go(func() { fetch(b) })
		}
		wg.Wait()
	}
	fetched := false
	for _, b := range batches {
		if b.err != nil {
			continue
		}
		u.fetches.Add(uint64(len(b.idx)))
		for j, i := range b.idx {
			keys[i].val = b.vals[j]
			fetched = fetched || b.vals[j].Found
		}
	}
	if touch {
		for i := range keys {
			u.invalidate(keys[i].key)
		}
	}
	for _, b := range batches {
		if b.err != nil {
			c.out = c.out[:mark]
			c.status = statusServerError
			c.reply(upError(b.srv, b.err))
			return
		}
	}
	if fetched {
		// Rebuild the reply in request order, fetched values between the local hits.
		var buf []byte
		for i := range keys {
			k := &keys[i]
			switch {
			case k.hit:
				buf = append(buf, c.out[k.start:k.end]...)
			case k.val.Found:
				if !touch {
					u.install(k.key, k.snap, k.val)
				}
				buf = protocol.AppendValue(buf, str(k.key), k.val.Flags, k.val.Value, k.val.CAS, withCAS)
			}
		}
		c.out = append(c.out[:mark], buf...)
	}
	for i := range keys {
		c.countGet(touch, keys[i].hit || keys[i].val.Found)
	}
	c.out = append(c.out, protocol.End...)
}

// forwardMeta forwards a meta write, req, and relays the upstream's reply, unless it is the
// nominal one (done) and the client asked for quiet mode. false: it failed, and the error reply
// is set.
func (u *upstreamBackend) forwardMeta(c *session, key, req []byte, done statusID, noReply bool) bool {
	r, ok := u.write(c, key, req, true)
	if !ok {
		return false
	}
	c.status = statusOf(r, done)
	if !noReply || c.status != done {
		c.out = append(c.out, r...)
	}
	return true
}

// metaDelete forwards md.
func (u *upstreamBackend) metaDelete(c *session, key []byte, f metaFlags) {
	if !u.forwardMeta(c, key, appendTokens(nil, &c.tok, withoutQuiet(2)), statusDeleted, f.noReply) {
		return
	}
	if c.status == statusDeleted {
		u.s.st.deleteHits.Add(1)
	} else {
		u.s.st.deleteMisses.Add(1)
	}
}

// metaArith forwards ma.
func (u *upstreamBackend) metaArith(c *session, key []byte, _ arithReq, f metaFlags) {
	u.forwardMeta(c, key, appendTokens(nil, &c.tok, withoutQuiet(2)), statusOK, f.noReply)
}

// metaGet runs mg in upstream mode: from the local copy when it has the key and the flags ask
// only what a copy knows, else through the upstream.
func (u *upstreamBackend) metaGet(c *session, key []byte, f metaFlags) {
	s := u.s
	t := &c.tok
	forward := f.vivify || f.newTTL || f.hasRecache
	for i := 2; i < t.N && !forward; i++ {
		switch t.Tok(i)[0] {
		case 't', 'h', 'l', 'E':
			forward = true
		}
	}
	s.st.cmdGet.Add(1)
	if !forward {
		req := f.fetchReq()
		var res fetchResult
		if s.fetch(key, &req, &res); res.hit {
			c.replyMetaGet(key, &f, &res)
			return
		}
		// Not here: the upstream answers, and counts, instead.
	}
	// N and T change the upstream's item: a write. Otherwise the client's request is followed by
	// a fill in the same round trip.
	write := f.vivify || f.newTTL
	req := appendTokens(nil, t, withoutQuiet(2))
	var snap snapshot
	n := 1
	if write {
		u.invalidate(key)
	} else {
		snap = u.snapshot(key)
		req = upstream.AppendGet(req, key, nil)
		n = 2
	}
	srv := u.cluster.Pick(key)
	replies, err := srv.Do(req, n)
	if write {
		u.invalidate(key)
	}
	if err != nil {
		c.status = statusServerError
		c.replyErr(upError(srv, err))
		return
	}
	if !write {
		u.fetches.Add(1)
		if v, err := upstream.ParseValue(replies[1]); err == nil && v.Found {
			u.install(key, snap, v)
		}
	}
	r := replies[0]
	switch {
	case bytes.HasPrefix(r, []byte("VA ")) || bytes.HasPrefix(r, []byte("HD")):
		s.st.getHits.Add(1)
		c.status = statusHit
	case bytes.HasPrefix(r, []byte("EN")):
		s.st.getMisses.Add(1)
		c.status = statusMiss
		if f.noReply {
			return
		}
	default:
		c.status = statusOf(r, statusOK)
	}
	c.out = append(c.out, r...)
}

// metaSet forwards ms; key is the decoded key, sr.value the data block.
func (u *upstreamBackend) metaSet(c *session, key []byte, sr storeReq, f metaFlags) {
	u.s.st.cmdSet.Add(1)
	req := appendTokens(nil, &c.tok, withoutQuiet(3))
	req = append(append(req, sr.value...), "\r\n"...)
	u.forwardMeta(c, key, req, statusStored, f.noReply)
}

// metaDebug forwards me: the item's metadata is the upstream's.
func (u *upstreamBackend) metaDebug(c *session, key []byte, _ bool) {
	srv := u.cluster.Pick(key)
	replies, err := srv.Do(appendTokens(nil, &c.tok, nil), 1)
	if err != nil {
		c.status = statusServerError
		c.reply(upError(srv, err))
		return
	}
	c.status = statusOf(replies[0], statusOK)
	c.out = append(c.out, replies[0]...)
}
