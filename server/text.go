package server

import (
	"bytes"
	"errors"
	"strconv"
	"time"

	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// Replies shared by several commands.
const (
	badFormat   = "CLIENT_ERROR bad command line format"
	badExptime  = "CLIENT_ERROR invalid exptime argument"
	badDelta    = "CLIENT_ERROR invalid numeric delta argument"
	nonNumeric  = "CLIENT_ERROR cannot increment or decrement non-numeric value"
	badChunk    = "CLIENT_ERROR bad data chunk"
	tooLarge    = "SERVER_ERROR object too large for cache"
	noMemory    = "SERVER_ERROR out of memory storing object"
	deleteUsage = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"
)

// get runs get, gets, gat and gats: "get <key>*", "gat <exptime> <key>*".
func (c *session) get(cmd cmdID, withCAS, touch bool) {
	c.cmd = cmd
	if c.s.up != nil {
		c.upGet(withCAS, touch)
		return
	}
	t := &c.tok
	first := 1
	var exptime int64
	if touch {
		raw, ok := protocol.ParseInt32(t.Tok(1))
		if !ok {
			c.status = statusClientError
			c.reply(badExptime)
			return
		}
		exptime = c.s.store.Exptime(int64(raw))
		first = 2
	}
	mark := len(c.out)
	for i := first; i < t.N; i++ {
		if !c.getKey(t.Tok(i), withCAS, touch, exptime) {
			c.out = c.out[:mark]
			c.status = statusClientError
			c.reply(badFormat)
			return
		}
	}
	// Keys beyond memcached's token limit: split the rest of the line the same way.
	rest := t.Rest
	for len(rest) > 0 {
		if rest[0] == ' ' {
			rest = rest[1:]
			continue
		}
		end := bytes.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		if !c.getKey(rest[:end], withCAS, touch, exptime) {
			c.out = c.out[:mark]
			c.status = statusClientError
			c.reply(badFormat)
			return
		}
		rest = rest[end:]
	}
	c.out = append(c.out, protocol.End...)
}

// getKey appends one key's VALUE if it is a hit; false means the key is too long.
func (c *session) getKey(key []byte, withCAS, touch bool, exptime int64) bool {
	if len(key) > protocol.MaxKeyLen {
		return false
	}
	s := c.s
	k := str(key)
	hit := false
	if touch {
		// gat changes the item's expiry: a Modify, so the kernel copy is dropped before we reply.
		_, _ = s.store.Do(k, func(cur *cache.Item) (*cache.Item, cache.Op) {
			if cur == nil {
				return nil, cache.Keep
			}
			hit = true
			c.out = protocol.AppendValue(c.out, k, cur.Flags, cur.Value, cur.CAS, withCAS)
			cur.Exptime = exptime
			cur.Fetched = true
			cur.LastAccess = s.store.Now().Unix()
			return nil, cache.Modify
		})
	} else {
		hit = c.readKey(k, key, withCAS)
	}
	c.countGet(touch, hit)
	return true
}

// readKey appends key's VALUE if the store holds it (k is key as a string) and reports whether
// it did. A UDP hit is offered to the kernel.
func (c *session) readKey(k string, key []byte, withCAS bool) bool {
	s := c.s
	hit := false
	if c.udp && s.kernel != nil {
		// Offer the hit to the kernel under the key's lock, with the live item, so a fill can
		// never install a value older than the store's.
		_, _ = s.store.Do(k, func(cur *cache.Item) (*cache.Item, cache.Op) {
			if cur == nil {
				return nil, cache.Keep
			}
			hit = true
			c.out = protocol.AppendValue(c.out, k, cur.Flags, cur.Value, cur.CAS, withCAS)
			cur.Fetched = true
			cur.LastAccess = s.store.Now().Unix()
			ki := KernelItem{Key: string(key), Flags: cur.Flags, Value: cur.Value, CAS: cur.CAS,
				MetaState: cur.Stale || cur.WinIssued}
			if cur.Exptime != 0 {
				ki.Expires = time.Unix(cur.Exptime, 0)
			}
			if err := s.kernel.Offer(ki); err != nil {
				s.st.kernelErrors.Add(1)
			}
			return nil, cache.Keep
		})
		return hit
	}
	if it, ok := s.store.Get(k); ok {
		c.out = protocol.AppendValue(c.out, k, it.Flags, it.Value, it.CAS, withCAS)
		return true
	}
	return false
}

// countGet counts one key of a retrieval command, hit or miss.
func (c *session) countGet(touch, hit bool) {
	s := c.s
	s.st.cmdGet.Add(1)
	if touch {
		s.st.cmdTouch.Add(1)
	}
	if hit {
		s.st.getHits.Add(1)
		if touch {
			s.st.touchHits.Add(1)
		}
		c.status = statusHit
		if s.metrics != nil {
			s.metrics.count(c.cmd, statusHit)
		}
	} else {
		s.st.getMisses.Add(1)
		if touch {
			s.st.touchMisses.Add(1)
		}
		c.status = statusMiss
		if s.metrics != nil {
			s.metrics.count(c.cmd, statusMiss)
		}
	}
}

// update runs the storage commands: "<cmd> <key> <flags> <exptime> <bytes> [<cas>] [noreply]"
// followed by a data block of <bytes> bytes and "\r\n".
func (c *session) update(cmd cmdID, data []byte) (int, action) {
	c.cmd = cmd
	t := &c.tok
	ntokens := t.N + 1
	isCAS := cmd == cmdCas
	if (!isCAS && ntokens != 6 && ntokens != 7) || (isCAS && ntokens != 7 && ntokens != 8) {
		// memcached 1.6.18 does not take a line with the wrong token count for a storage
		// command: it is an unknown command, and the data line that follows is read as the
		// next command, so a client gets one reply per line it sent.
		c.status = statusError
		c.reply("ERROR")
		return 0, 0
	}
	vlen := announcedLen(t, 4)
	vlenOK := vlen >= 0
	reject := func(status statusID, msg string) (int, action) { return c.rejectBlock(status, c.reply, msg, vlen) }
	c.noreply = t.NoReply()
	key := t.Tok(1)
	if len(key) > protocol.MaxKeyLen {
		return reject(statusClientError, badFormat)
	}
	flags, ok1 := protocol.ParseUint32(t.Tok(2))
	rawExp, ok2 := protocol.ParseInt32(t.Tok(3))
	if !ok1 || !ok2 || !vlenOK {
		return reject(statusClientError, badFormat)
	}
	var casIn uint64
	if isCAS {
		v, ok := protocol.ParseUint64(t.Tok(5))
		if !ok {
			return reject(statusClientError, badFormat)
		}
		casIn = v
	}
	// A failed set must not leave the older value readable (memcached unlinks it).
	value, n, act, ok := c.takeBlock(key, vlen, data, cmd == cmdSet, c.reply)
	if !ok {
		return n, act
	}
	s := c.s
	if s.up != nil {
		c.upStore(cmd, key, value)
		return n, 0
	}
	res := c.store(cmd, string(key), flags, s.store.Exptime(int64(rawExp)), value, casIn)
	c.reply(res)
	return n, 0
}

// store applies a storage command to the store and returns the reply line.
func (c *session) store(cmd cmdID, key string, flags uint32, exptime int64, value []byte, casIn uint64) string {
	s := c.s
	s.st.cmdSet.Add(1)
	var result string
	_, err := s.store.Do(key, func(cur *cache.Item) (*cache.Item, cache.Op) {
		switch cmd {
		case cmdAdd:
			if cur != nil {
				result = "NOT_STORED"
				return nil, cache.Keep
			}
		case cmdReplace:
			if cur == nil {
				result = "NOT_STORED"
				return nil, cache.Keep
			}
		case cmdAppend, cmdPrepend:
			if cur == nil {
				result = "NOT_STORED"
				return nil, cache.Keep
			}
			// memcached cannot allocate the joined item: NOT_STORED, the old one stays.
			if int64(len(key)+len(cur.Value)+len(value))+cache.ItemOverhead > s.cfg.MaxItemSize {
				result = "NOT_STORED"
				return nil, cache.Keep
			}
			joined := make([]byte, 0, len(cur.Value)+len(value))
			if cmd == cmdAppend {
				joined = append(append(joined, cur.Value...), value...)
			} else {
				joined = append(append(joined, value...), cur.Value...)
			}
			result = "STORED"
			return &cache.Item{Value: joined, Flags: cur.Flags, Exptime: cur.Exptime}, cache.Replace
		case cmdCas:
			if cur == nil {
				s.st.casMisses.Add(1)
				result = "NOT_FOUND"
				return nil, cache.Keep
			}
			if cur.CAS != casIn {
				s.st.casBadval.Add(1)
				result = "EXISTS"
				return nil, cache.Keep
			}
			s.st.casHits.Add(1)
		}
		result = "STORED"
		return &cache.Item{Value: bytes.Clone(value), Flags: flags, Exptime: exptime}, cache.Replace
	})
	switch {
	case errors.Is(err, cache.ErrTooLarge):
		s.st.storeTooLarge.Add(1)
		c.status = statusServerError
		return tooLarge
	case err != nil:
		s.st.storeNoMemory.Add(1)
		c.status = statusServerError
		return noMemory
	}
	switch result {
	case "STORED":
		c.status = statusStored
	case "NOT_STORED":
		c.status = statusNotStored
	case "EXISTS":
		c.status = statusExists
	default:
		c.status = statusNotFound
	}
	return result
}

// arith runs "incr|decr <key> <delta> [noreply]".
func (c *session) arith(cmd cmdID) {
	c.cmd = cmd
	t := &c.tok
	c.noreply = t.NoReply()
	key, ok := c.keyToken()
	if !ok {
		return
	}
	delta, ok := protocol.ParseUint64(t.Tok(2))
	if !ok {
		c.status = statusClientError
		c.reply(badDelta)
		return
	}
	if c.s.up != nil {
		c.upArith(cmd, key)
		return
	}
	var buf [20]byte
	res, st := c.delta(str(key), cmd == cmdIncr, delta, 0, buf[:0])
	switch st {
	case deltaOK:
		c.status = statusOK
		if !c.noreply {
			c.out = append(c.out, res...)
			c.out = append(c.out, "\r\n"...)
		}
		c.noreply = false
	case deltaNotFound:
		c.status = statusNotFound
		c.reply("NOT_FOUND")
	case deltaNonNumeric:
		c.status = statusClientError
		c.reply(nonNumeric)
	case deltaBadCAS:
		c.status = statusExists
		c.reply("EXISTS")
	default:
		c.status = statusServerError
		c.reply("SERVER_ERROR out of memory")
	}
}

type deltaStatus int

const (
	deltaOK deltaStatus = iota
	deltaNotFound
	deltaNonNumeric
	deltaBadCAS
	deltaNoMemory
)

// delta is memcached's do_add_delta: incr wraps at 2^64, decr stops at 0. A result no longer
// than the old value is padded with spaces to the old length, as memcached rewrites in place.
// A non-zero casIn must match the item's CAS. It appends the new number to dst.
func (c *session) delta(key string, incr bool, delta, casIn uint64, dst []byte) ([]byte, deltaStatus) {
	s := c.s
	st := deltaNotFound
	_, err := s.store.Do(key, func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			return nil, cache.Keep
		}
		if len(cur.Value) == 0 {
			st = deltaNonNumeric
			return nil, cache.Keep
		}
		if casIn != 0 && cur.CAS != casIn {
			st = deltaBadCAS
			return nil, cache.Keep
		}
		v, ok := protocol.ParseUint64(cur.Value)
		if !ok {
			st = deltaNonNumeric
			return nil, cache.Keep
		}
		if incr {
			v += delta
		} else if delta > v {
			v = 0
		} else {
			v -= delta
		}
		dst = strconv.AppendUint(dst, v, 10)
		n := max(len(dst), len(cur.Value))
		nv := make([]byte, n)
		copy(nv, dst)
		for i := len(dst); i < n; i++ {
			nv[i] = ' '
		}
		st = deltaOK
		return &cache.Item{Value: nv, Flags: cur.Flags, Exptime: cur.Exptime}, cache.Replace
	})
	if err != nil {
		return dst, deltaNoMemory
	}
	switch {
	case st == deltaOK && incr:
		s.st.incrHits.Add(1)
	case st == deltaOK:
		s.st.decrHits.Add(1)
	case st == deltaNotFound && incr:
		s.st.incrMisses.Add(1)
	case st == deltaNotFound:
		s.st.decrMisses.Add(1)
	}
	return dst, st
}

// delete runs "delete <key> [0] [noreply]".
func (c *session) delete() {
	c.cmd = cmdDelete
	t := &c.tok
	if t.N > 2 {
		holdZero := string(t.Tok(2)) == "0"
		c.noreply = t.NoReply()
		if !((t.N == 3 && (holdZero || c.noreply)) || (t.N == 4 && holdZero && c.noreply)) {
			c.status = statusClientError
			c.reply(deleteUsage)
			return
		}
	}
	key, ok := c.keyToken()
	if !ok {
		return
	}
	if c.s.up != nil {
		c.upDelete(key)
		return
	}
	if c.s.deleteKey(str(key)) {
		c.s.st.deleteHits.Add(1)
		c.status = statusDeleted
		c.reply("DELETED")
	} else {
		c.s.st.deleteMisses.Add(1)
		c.status = statusNotFound
		c.reply("NOT_FOUND")
	}
}

// deleteKey removes key and reports whether it was there.
func (s *Server) deleteKey(key string) bool {
	found := false
	_, _ = s.store.Do(key, func(cur *cache.Item) (*cache.Item, cache.Op) {
		found = cur != nil
		return nil, cache.Delete
	})
	return found
}

// touch runs "touch <key> <exptime> [noreply]".
func (c *session) touch() {
	c.cmd = cmdTouch
	t := &c.tok
	c.noreply = t.NoReply()
	key, ok := c.keyToken()
	if !ok {
		return
	}
	raw, ok := protocol.ParseInt32(t.Tok(2))
	if !ok {
		c.status = statusClientError
		c.reply(badExptime)
		return
	}
	s := c.s
	s.st.cmdTouch.Add(1)
	if s.up != nil {
		c.upTouch(key)
		return
	}
	exp := s.store.Exptime(int64(raw))
	found := false
	_, _ = s.store.Do(str(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			return nil, cache.Keep
		}
		found = true
		cur.Exptime = exp
		return nil, cache.Modify
	})
	if found {
		s.st.touchHits.Add(1)
		c.status = statusTouched
		c.reply("TOUCHED")
	} else {
		s.st.touchMisses.Add(1)
		c.status = statusNotFound
		c.reply("NOT_FOUND")
	}
}

// flushAll runs "flush_all [delay] [noreply]".
func (c *session) flushAll() {
	c.cmd = cmdFlushAll
	t := &c.tok
	c.noreply = t.NoReply()
	s := c.s
	s.st.cmdFlush.Add(1)
	var raw int32
	want := 1
	if c.noreply {
		want = 2
	}
	if t.N != want {
		v, ok := protocol.ParseInt32(t.Tok(1))
		if !ok {
			c.status = statusClientError
			c.reply(badExptime)
			return
		}
		raw = v
	}
	var delay time.Duration
	if raw > 0 {
		// Relative up to 30 days, absolute beyond, like an exptime.
		delay = time.Duration(s.store.Exptime(int64(raw))-s.store.Now().Unix()) * time.Second
	}
	if s.up != nil {
		c.upFlushAll(delay)
		return
	}
	s.store.FlushAll(delay)
	c.status = statusOK
	c.reply("OK")
}

// verbosity runs "verbosity <level> [noreply]"; the level is only remembered.
func (c *session) verbosity() {
	c.cmd = cmdVerbosity
	t := &c.tok
	c.noreply = t.NoReply()
	level, ok := protocol.ParseUint32(t.Tok(1))
	if !ok {
		c.status = statusClientError
		c.reply(badFormat)
		return
	}
	c.s.verbosity.Store(min(level, 2))
	c.status = statusOK
	c.reply("OK")
}

// slabs runs memcached's "slabs automove <0|1|2>", "slabs automove ratio <ratio>" and "slabs
// reassign <src> <dst>" with memcached 1.6.18's replies, token counts and number parsing. The
// store has no slab pages to move, so the automove settings are checked and acknowledged without
// effect, and a reassign between valid classes finds no spare page. The valid classes are the
// ones stats slabs reports: 1, and 0 for memcached's global page pool.
func (c *session) slabs() {
	t := &c.tok
	ntokens := t.N + 1
	sub := string(t.Tok(1))
	switch {
	case sub == "reassign" && ntokens == 5:
		c.slabsReassign()
	case sub == "automove" && ntokens >= 4:
		c.slabsAutomove()
	default:
		c.status = statusError
		c.reply("ERROR")
	}
}

func (c *session) slabsAutomove() {
	t := &c.tok
	c.noreply = t.NoReply()
	if string(t.Tok(2)) == "ratio" {
		if _, ok := protocol.ParseDouble(t.Tok(3)); t.N+1 < 5 || !ok {
			c.status = statusError
			c.reply("ERROR")
			return
		}
	} else {
		level, ok := protocol.ParseUint32(t.Tok(2))
		if !ok {
			c.status = statusClientError
			c.reply(badFormat)
			return
		}
		if level > 2 {
			c.status = statusError
			c.reply("ERROR")
			return
		}
	}
	c.status = statusOK
	c.reply("OK")
}

// slabClasses is the largest class id slabsReassign accepts: the one class stats slabs reports.
const slabClasses = 1

func (c *session) slabsReassign() {
	t := &c.tok
	src, ok1 := protocol.ParseInt32(t.Tok(2))
	dst, ok2 := protocol.ParseInt32(t.Tok(3))
	switch {
	case !ok1 || !ok2:
		c.status = statusClientError
		c.reply(badFormat)
	case src == dst:
		c.status = statusClientError
		c.reply("SAME src and dst class are identical")
	// src -1 asks memcached to pick a class with a spare page; there is none, so it stays -1.
	case src < 0 || src > slabClasses || dst < 0 || dst > slabClasses:
		c.status = statusClientError
		c.reply("BADCLASS invalid src or dst class id")
	default:
		c.status = statusServerError
		c.reply("NOSPARE source class has no spare pages")
	}
}

// keyToken returns token 1 as a key, or false after answering a key over 250 bytes as memcached
// does.
func (c *session) keyToken() ([]byte, bool) {
	key := c.tok.Tok(1)
	if len(key) > protocol.MaxKeyLen {
		c.status = statusClientError
		c.reply(badFormat)
		return nil, false
	}
	return key, true
}
