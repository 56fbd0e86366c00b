package server

// The operations layer: what each command does to the local store, in one place. The text
// protocol (text.go) and the meta protocol (meta.go) parse a request into one of the requests
// below, call the operation, and format its typed result in their own syntax; upstream mode
// (upstream.go) calls the same operations for what it keeps locally.
//
// The kernel copy stays consistent here and in the store, not in the front ends: every change an
// operation makes goes through cache.Store.Do, whose hook drops the kernel copy under the key's
// lock before Do returns, so before any reply is formatted (docs/DESIGN.md invariant 1); a UDP
// get offers its hit to the kernel under the same lock, with the live item, so a fill never
// installs an older value. Values are never changed in place (cache.Item), so a result's item
// copy can be formatted after the lock is released.

import (
	"bytes"
	"errors"
	"strconv"
	"time"

	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// storeMode is how a storage command treats the key's current item: memcached's NREAD_* modes.
type storeMode uint8

const (
	modeSet storeMode = iota
	modeAdd
	modeReplace
	modeAppend
	modePrepend
)

// storeReq is one storage command: set, add, replace, append, prepend, cas, or ms.
type storeReq struct {
	mode    storeMode
	flags   uint32
	exptime int64 // absolute, as cache.Item's
	value   []byte
	// hasCAS: set and replace store only over an item whose CAS is cas (text cas, ms C), and
	// append and prepend only join such an item; add ignores it, as memcached does.
	hasCAS bool
	cas    uint64
	// stale: a CAS older than the item's stores the value anyway, marked stale, keeping the old
	// expiry (ms I).
	stale bool
	// vivify: append and prepend store the value alone, expiring at vivifyExptime, when the key
	// has no item (ms N).
	vivify        bool
	vivifyExptime int64
}

// storeStatus is a storage command's outcome.
type storeStatus uint8

const (
	storeStored    storeStatus = iota
	storeNotStored             // add over an item, replace/append/prepend with none, or a join too large
	storeExists                // a CAS mismatch
	storeNotFound              // a CAS store with no item
	storeTooLarge              // the item exceeds the item size limit
	storeNoMemory              // the item does not fit in memory
)

// storeResult is a storage command's outcome and, when stored, the new item's CAS.
type storeResult struct {
	status storeStatus
	cas    uint64
}

// storeItem runs a storage command on key.
func (s *Server) storeItem(key []byte, r *storeReq) storeResult {
	s.st.cmdSet.Add(1)
	status := storeStored
	cas, err := s.store.Do(string(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		next := &cache.Item{Flags: r.flags, Exptime: r.exptime}
		switch r.mode {
		case modeAdd:
			if cur != nil {
				status = storeNotStored
				return nil, cache.Keep
			}
		case modeSet, modeReplace:
			if r.hasCAS {
				if cur == nil {
					s.st.casMisses.Add(1)
					status = storeNotFound
					return nil, cache.Keep
				}
				if cur.CAS != r.cas {
					if !r.stale || r.cas >= cur.CAS {
						s.st.casBadval.Add(1)
						cur.Count(cache.CASBadval)
						status = storeExists
						return nil, cache.Keep
					}
					next.Stale, next.Exptime, next.WinIssued = true, cur.Exptime, cur.WinIssued
				}
				s.st.casHits.Add(1)
				cur.Count(cache.CASHit)
			} else if r.mode == modeReplace && cur == nil {
				status = storeNotStored
				return nil, cache.Keep
			}
		case modeAppend, modePrepend:
			if cur == nil {
				if r.vivify {
					next.Exptime = r.vivifyExptime
					break
				}
				status = storeNotStored
				return nil, cache.Keep
			}
			if r.hasCAS && cur.CAS != r.cas {
				status = storeExists
				return nil, cache.Keep
			}
			// memcached cannot allocate the joined item: not stored, the old one stays.
			if int64(len(key)+len(cur.Value)+len(r.value))+cache.ItemOverhead > s.cfg.MaxItemSize {
				status = storeNotStored
				return nil, cache.Keep
			}
			joined := make([]byte, 0, len(cur.Value)+len(r.value))
			if r.mode == modeAppend {
				joined = append(append(joined, cur.Value...), r.value...)
			} else {
				joined = append(append(joined, r.value...), cur.Value...)
			}
			next.Value, next.Flags, next.Exptime = joined, cur.Flags, cur.Exptime
			return next, cache.Replace
		}
		next.Value = bytes.Clone(r.value)
		return next, cache.Replace
	})
	switch {
	case errors.Is(err, cache.ErrTooLarge):
		s.st.storeTooLarge.Add(1)
		return storeResult{status: storeTooLarge}
	case err != nil:
		s.st.storeNoMemory.Add(1)
		return storeResult{status: storeNoMemory}
	}
	return storeResult{status: status, cas: cas}
}

// arithReq is one incr, decr or ma.
type arithReq struct {
	incr  bool
	delta uint64
	// hasCAS: change only an item whose CAS is cas (ma C).
	hasCAS bool
	cas    uint64
	// vivify: a missing key is created holding initial, expiring at vivifyExptime (ma N, J).
	vivify        bool
	initial       uint64
	vivifyExptime int64
	// newTTL: the changed item expires at exptime (ma T).
	newTTL  bool
	exptime int64
}

// arithStatus is an arithmetic command's outcome.
type arithStatus uint8

const (
	arithOK arithStatus = iota
	arithNotFound
	arithNonNumeric
	arithExists // a CAS mismatch
	arithNoMemory
)

// arithResult is an arithmetic command's outcome. When OK, digits is the new number (without
// the padding stored), cas and exptime the new item's, created whether a miss created it.
type arithResult struct {
	status  arithStatus
	digits  []byte
	cas     uint64
	exptime int64
	created bool
}

// arith is memcached's do_add_delta on key: incr wraps at 2^64, decr stops at 0. A result no
// longer than the old value is padded with spaces to the old length, as memcached rewrites in
// place. The new number is appended to dst, to spare an allocation.
func (s *Server) arith(key []byte, r *arithReq, dst []byte) arithResult {
	res := arithResult{status: arithNotFound, digits: dst}
	cas, err := s.store.Do(string(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			if !r.vivify {
				return nil, cache.Keep
			}
			value := strconv.AppendUint(nil, r.initial, 10)
			res.status, res.created, res.exptime = arithOK, true, r.vivifyExptime
			res.digits = append(res.digits, value...)
			return &cache.Item{Value: value, Exptime: r.vivifyExptime}, cache.Replace
		}
		if len(cur.Value) == 0 {
			res.status = arithNonNumeric
			return nil, cache.Keep
		}
		if r.hasCAS && cur.CAS != r.cas {
			res.status = arithExists
			return nil, cache.Keep
		}
		v, ok := protocol.ParseUint64(cur.Value)
		if !ok {
			res.status = arithNonNumeric
			return nil, cache.Keep
		}
		if r.incr {
			cur.Count(cache.IncrHit)
		} else {
			cur.Count(cache.DecrHit)
		}
		switch {
		case r.incr:
			v += r.delta
		case r.delta > v:
			v = 0
		default:
			v -= r.delta
		}
		res.digits = strconv.AppendUint(res.digits, v, 10)
		digits := res.digits[len(dst):]
		nv := make([]byte, max(len(digits), len(cur.Value)))
		for i := copy(nv, digits); i < len(nv); i++ {
			nv[i] = ' '
		}
		res.status, res.exptime = arithOK, cur.Exptime
		if r.newTTL {
			res.exptime = r.exptime
		}
		return &cache.Item{Value: nv, Flags: cur.Flags, Exptime: res.exptime}, cache.Replace
	})
	if err != nil {
		return arithResult{status: arithNoMemory, digits: dst}
	}
	res.cas = cas
	res.digits = res.digits[len(dst):]
	switch {
	case res.status == arithOK && r.incr:
		s.st.incrHits.Add(1)
	case res.status == arithOK:
		s.st.decrHits.Add(1)
	case res.status == arithNotFound && r.incr:
		s.st.incrMisses.Add(1)
	case res.status == arithNotFound:
		s.st.decrMisses.Add(1)
	}
	return res
}

// deleteReq is one delete or md.
type deleteReq struct {
	// hasCAS: delete only an item whose CAS is cas (md C).
	hasCAS bool
	cas    uint64
	// stale: keep the value, marked stale with a new CAS, so that the next reader wins the right
	// to recache it (md I); with newTTL it expires at exptime (md T).
	stale, newTTL bool
	exptime       int64
}

// deleteStatus is a delete's outcome.
type deleteStatus uint8

const (
	deleteDone deleteStatus = iota
	deleteNotFound
	deleteExists // a CAS mismatch
)

// deleteItem runs a delete of key.
func (s *Server) deleteItem(key []byte, r *deleteReq) deleteStatus {
	status := deleteNotFound
	_, _ = s.store.Do(str(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			return nil, cache.Keep
		}
		if r.hasCAS && cur.CAS != r.cas {
			status = deleteExists
			return nil, cache.Keep
		}
		status = deleteDone
		if r.stale {
			next := &cache.Item{Value: cur.Value, Flags: cur.Flags, Exptime: cur.Exptime, Stale: true}
			if r.newTTL {
				next.Exptime = r.exptime
			}
			return next, cache.Replace
		}
		return nil, cache.Delete
	})
	if status == deleteDone {
		s.st.deleteHits.Add(1)
	} else {
		s.st.deleteMisses.Add(1)
	}
	return status
}

// drop removes key's item, uncounted: the old value of a failed set, an upstream write's local
// copy.
func (s *Server) drop(key []byte) {
	_, _ = s.store.Do(str(key), func(*cache.Item) (*cache.Item, cache.Op) { return nil, cache.Delete })
}

// touchItem sets key's expiry and reports whether the key had an item.
func (s *Server) touchItem(key []byte, exptime int64) bool {
	found := false
	_, _ = s.store.Do(str(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			return nil, cache.Keep
		}
		found = true
		cur.Exptime = exptime
		cur.Count(cache.TouchHit)
		return nil, cache.Modify
	})
	if found {
		s.st.touchHits.Add(1)
	} else {
		s.st.touchMisses.Add(1)
	}
	return found
}

// flushAll runs flush_all: every item stored before now+delay is gone from then on.
func (s *Server) flushAll(delay time.Duration) { s.store.FlushAll(delay) }

// fetchReq is one key of a retrieval: get, gets, gat, gats or mg.
type fetchReq struct {
	// touch: the item expires at exptime from now on (gat, mg T). It is a change, so the kernel
	// copy is dropped before the reply.
	touch   bool
	exptime int64
	// offer: offer a hit to the kernel cache (a get or mg over UDP).
	offer bool
	// noUpdate: do not record the fetch (mg u).
	noUpdate bool
	// vivify: a miss creates an empty item expiring at vivifyExptime, and this client wins the
	// right to fill it (mg N).
	vivify        bool
	vivifyExptime int64
	// tokens: hand out recache win tokens, for a stale item, or with recache for an item expiring
	// before recacheBefore (mg, R). recacheAfterTouch: R came after T, so the new expiry counts.
	tokens, recache, recacheAfterTouch bool
	recacheBefore                      int64
	// reply: format a hit as a get reply (VALUE, with the CAS if withCAS) into this session's
	// output while the key is locked, from the store's memory, instead of copying the value
	// into the result (whose item then has no Value).
	reply   *session
	withCAS bool
}

// fetchResult is one retrieved key. item is a copy from before this fetch changed it (Fetched
// and LastAccess as they were, which mg h and l report; the old Exptime under touch), or with
// created the new empty item; without its Value when the request had a reply session. won: this
// client got a recache win token; an item that already had one handed out has WinIssued set.
// now is the store's clock at the fetch, in unix seconds.
type fetchResult struct {
	item         cache.Item
	hit, created bool
	won          bool
	now          int64
	err          error
}

// plain reports whether r is a plain read, whose fetch the store records itself: no touch, no
// kernel offer, no meta state to read or change.
func (r *fetchReq) plain(s *Server) bool {
	return !r.touch && !(r.offer && s.kernel != nil) && !r.vivify && !r.tokens && !r.noUpdate
}

// fetch retrieves key into res.
func (s *Server) fetch(key []byte, r *fetchReq, res *fetchResult) {
	k := str(key)
	offer := r.offer && s.kernel != nil
	if r.plain(s) {
		// A plain read: the store records the fetch itself.
		if r.reply != nil {
			*res = fetchResult{}
			res.hit = s.store.View(k, func(it *cache.Item) { r.reply.appendValue(key, it, r.withCAS) })
			return
		}
		it, ok := s.store.Get(k)
		*res = fetchResult{item: it, hit: ok}
		return
	}
	if r.vivify {
		k = string(key) // may be stored
	}
	*res = fetchResult{}
	cas, err := s.store.Do(k, func(cur *cache.Item) (*cache.Item, cache.Op) {
		res.now = s.store.Now().Unix()
		if cur == nil {
			if !r.vivify {
				return nil, cache.Keep
			}
			res.created, res.won = true, true
			res.item = cache.Item{Value: []byte{}, Exptime: r.vivifyExptime, LastAccess: res.now}
			return &cache.Item{Value: []byte{}, Exptime: r.vivifyExptime, WinIssued: true}, cache.Replace
		}
		res.hit, res.item = true, *cur
		if r.reply != nil {
			// Before any change below: the reply shows the item as it was fetched.
			r.reply.appendValue(key, cur, r.withCAS)
			res.item.Value = nil
		} else {
			// A copy of the value: cur.Value is the store's memory, valid only until Do
			// returns, and the reply is formatted after.
			res.item.Value = append([]byte(nil), cur.Value...)
		}
		op := cache.Keep
		if r.recache && !r.recacheAfterTouch && !cur.WinIssued && cur.Exptime != 0 && cur.Exptime < r.recacheBefore {
			res.won = true
		}
		if r.touch {
			cur.Exptime = r.exptime
			cur.Count(cache.TouchHit)
			op = cache.Modify
		}
		if r.recache && r.recacheAfterTouch && !cur.WinIssued && cur.Exptime != 0 && cur.Exptime < r.recacheBefore {
			res.won = true
		}
		if r.tokens && cur.Stale && !cur.WinIssued {
			res.won = true
		}
		if res.won {
			cur.WinIssued = true
			// mg replies show the token from now on (Z): the kernel copy, which cannot, goes.
			op = cache.Modify
		}
		if !r.noUpdate {
			cur.Fetched = true
			cur.LastAccess = res.now
		}
		if offer && op == cache.Keep {
			// Under the key's lock, with the live item: a fill can never install a value older
			// than the store's. The kernel answers mg only of items without meta state.
			ki := KernelItem{Key: string(key), Flags: cur.Flags, Value: cur.Value, CAS: cur.CAS,
				MetaState: cur.Stale || cur.WinIssued}
			if cur.Exptime != 0 {
				ki.Expires = time.Unix(cur.Exptime, 0)
			}
			if err := s.kernel.Offer(ki); err != nil {
				s.st.kernelErrors.Add(1)
			}
		}
		return nil, op
	})
	if res.created {
		res.item.CAS = cas
	}
	res.err = err
}

// peek reads key's item without recording a fetch.
func (s *Server) peek(key []byte) (cache.Item, bool) {
	var it cache.Item
	found := false
	_, _ = s.store.Do(str(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur != nil {
			it, found = *cur, true
			it.Value = append([]byte(nil), cur.Value...) // cur.Value outlives Do only as a copy
		}
		return nil, cache.Keep
	})
	return it, found
}
