package server

import (
	"encoding/base64"
	"errors"
	"strconv"
	"time"

	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// Meta protocol limits, as memcached's MFLAG_MAX_OPT_LENGTH and MFLAG_MAX_OPAQUE_LENGTH.
const (
	metaMaxTokens = 20
	metaMaxOpaque = 32
)

const (
	badToken    = "CLIENT_ERROR bad token in command line format"
	invalidFlag = "CLIENT_ERROR invalid flag"
)

// metaFlags are a meta request's flags, parsed the way memcached's _meta_flag_preparse does.
type metaFlags struct {
	binKey, value, noReply, noUpdate, vivify, setStale, newTTL, hasCAS, hasRecache bool
	exptime, autoviv, recache                                                      int64
	clientFlags                                                                    uint32
	cas, initial, delta                                                            uint64
	mode                                                                           byte
}

// metaParse parses the flag tokens from index start and decodes a base64 key. It returns the key
// and "" or the error reply.
func (c *session) metaParse(start int, f *metaFlags) ([]byte, string) {
	t := &c.tok
	key := t.Tok(1)
	var seen [128]bool
	errstr, hasErr := badFormat, false
	s := c.s.store
	for i := start; i < t.N; i++ {
		tok := t.Tok(i)
		o := tok[0]
		if o >= 127 || seen[o] {
			return nil, "CLIENT_ERROR duplicate flag"
		}
		seen[o] = true
		arg := tok[1:]
		switch o {
		case 'b':
			n := base64.StdEncoding.DecodedLen(len(key))
			if cap(c.keyBuf) < n {
				c.keyBuf = make([]byte, n)
			}
			m, err := base64.StdEncoding.Decode(c.keyBuf[:n], key)
			if err != nil || m == 0 {
				errstr, hasErr = "CLIENT_ERROR error decoding key", true
			}
			key = c.keyBuf[:m]
			f.binKey = true
		case 'N', 'T', 'R':
			v, ok := protocol.ParseInt32(arg)
			if !ok {
				errstr, hasErr = badToken, true
				break
			}
			exp := s.Exptime(int64(v))
			switch o {
			case 'N':
				f.vivify, f.autoviv = true, exp
			case 'T':
				f.newTTL, f.exptime = true, exp
			default:
				f.hasRecache, f.recache = true, exp
			}
		case 'O', 'P', 'L', 'k', 's', 't', 'c', 'f', 'l', 'h':
		case 'v':
			f.value = true
		case 'u':
			f.noUpdate = true
		case 'q':
			f.noReply = true
		case 'F':
			v, ok := protocol.ParseUint32(arg)
			if !ok {
				hasErr = true
			}
			f.clientFlags = v
		case 'C':
			v, ok := protocol.ParseUint64(arg)
			if !ok {
				errstr, hasErr = badToken, true
				break
			}
			f.hasCAS, f.cas = true, v
		case 'M':
			if len(tok) != 2 {
				errstr, hasErr = "CLIENT_ERROR incorrect length for M token", true
				break
			}
			f.mode = tok[1]
		case 'J':
			v, ok := protocol.ParseUint64(arg)
			if !ok {
				errstr, hasErr = "CLIENT_ERROR invalid numeric initial value", true
			}
			f.initial = v
		case 'D':
			v, ok := protocol.ParseUint64(arg)
			if !ok {
				errstr, hasErr = "CLIENT_ERROR invalid numeric delta value", true
			}
			f.delta = v
		case 'I':
			f.setStale = true
		default:
			return nil, invalidFlag
		}
	}
	if hasErr {
		return nil, errstr
	}
	return key, ""
}

// appendMetaKey appends " k<key>", base64-encoded with " b" for binary keys.
func appendMetaKey(dst, key []byte, bin bool) []byte {
	dst = append(dst, " k"...)
	if !bin {
		return append(dst, key...)
	}
	dst = base64.StdEncoding.AppendEncode(dst, key)
	return append(dst, " b"...)
}

// appendOpaqueAndKey appends the O and k flags in request order; false if an opaque is too long.
func (c *session) appendOpaqueAndKey(dst, key []byte, bin bool) ([]byte, bool) {
	t := &c.tok
	for i := 2; i < t.N; i++ {
		tok := t.Tok(i)
		switch tok[0] {
		case 'O':
			if len(tok) > metaMaxOpaque {
				return dst, false
			}
			dst = append(append(dst, ' '), tok...)
		case 'k':
			dst = appendMetaKey(dst, key, bin)
		}
	}
	return dst, true
}

func ttl(exptime, now int64) int64 {
	if exptime == 0 {
		return -1
	}
	return exptime - now
}

// meta runs the meta commands: mg, ms, md, ma, mn, me.
func (c *session) meta(op byte, data []byte) (int, action) {
	t := &c.tok
	ntokens := t.N + 1
	switch op {
	case 'n':
		c.cmd, c.status = cmdMn, statusOK
		c.out = append(c.out, "MN\r\n"...)
		return 0, 0
	case 'g', 's', 'd', 'a', 'e':
	default:
		c.status = statusError
		c.reply("ERROR")
		return 0, 0
	}
	c.s.st.cmdMeta.Add(1)
	if op == 's' {
		return c.metaSet(data)
	}
	if op == 'e' {
		c.metaDebug()
		return 0, 0
	}
	switch op {
	case 'g':
		c.cmd = cmdMg
	case 'd':
		c.cmd = cmdMd
	default:
		c.cmd = cmdMa
	}
	if ntokens < 3 {
		c.status = statusError
		c.reply("ERROR")
		return 0, 0
	}
	if len(t.Tok(1)) > protocol.MaxKeyLen {
		c.status = statusClientError
		c.replyErr(badFormat)
		return 0, 0
	}
	if ntokens > metaMaxTokens {
		c.status = statusClientError
		if op == 'g' {
			c.replyErr("CLIENT_ERROR options flags are too long")
		} else {
			c.replyErr("CLIENT_ERROR options flags too long")
		}
		return 0, 0
	}
	var f metaFlags
	key, errstr := c.metaParse(2, &f)
	if errstr != "" {
		c.status = statusClientError
		if op != 'g' {
			errstr = "CLIENT_ERROR invalid or duplicate flag"
		}
		c.replyErr(errstr)
		return 0, 0
	}
	if c.s.up != nil {
		c.upMeta(op, key, &f)
		return 0, 0
	}
	switch op {
	case 'g':
		c.metaGet(key, &f)
	case 'd':
		c.metaDelete(key, &f)
	case 'a':
		c.metaArith(key, &f)
	}
	return 0, 0
}

// metaGet runs "mg <key> <flag>*".
func (c *session) metaGet(key []byte, f *metaFlags) {
	s := c.s
	t := &c.tok
	s.st.cmdGet.Add(1)
	mark := len(c.out)
	hit, created, tooLong := false, false, false
	k := str(key)
	if f.vivify {
		k = string(key) // may be stored
	}
	cas, err := s.store.Do(k, func(cur *cache.Item) (*cache.Item, cache.Op) {
		now := s.store.Now().Unix()
		if cur == nil {
			if !f.vivify {
				return nil, cache.Keep
			}
			created = true
			return &cache.Item{Value: []byte{}, Exptime: f.autoviv, WinIssued: true}, cache.Replace
		}
		hit = true
		op := cache.Keep
		fetched, lastAccess := cur.Fetched, cur.LastAccess
		won := false
		if f.value {
			c.out = append(c.out, "VA "...)
			c.out = strconv.AppendInt(c.out, int64(len(cur.Value)), 10)
		} else {
			c.out = append(c.out, "HD"...)
		}
		for i := 2; i < t.N; i++ {
			tok := t.Tok(i)
			switch tok[0] {
			case 'T':
				cur.Exptime = f.exptime
				op = cache.Modify
			case 'R':
				if !cur.WinIssued && cur.Exptime != 0 && cur.Exptime < f.recache {
					won = true
				}
			case 's':
				c.out = append(c.out, " s"...)
				c.out = strconv.AppendInt(c.out, int64(len(cur.Value)), 10)
			case 't':
				c.out = append(c.out, " t"...)
				c.out = strconv.AppendInt(c.out, ttl(cur.Exptime, now), 10)
			case 'c':
				c.out = append(c.out, " c"...)
				c.out = strconv.AppendUint(c.out, cur.CAS, 10)
			case 'f':
				c.out = append(c.out, " f"...)
				c.out = strconv.AppendUint(c.out, uint64(cur.Flags), 10)
			case 'l':
				c.out = append(c.out, " l"...)
				c.out = strconv.AppendInt(c.out, now-lastAccess, 10)
			case 'h':
				if fetched {
					c.out = append(c.out, " h1"...)
				} else {
					c.out = append(c.out, " h0"...)
				}
			case 'O':
				if len(tok) > metaMaxOpaque {
					tooLong = true
				}
				c.out = append(append(c.out, ' '), tok...)
			case 'k':
				c.out = appendMetaKey(c.out, key, f.binKey)
			}
		}
		if cur.WinIssued {
			c.out = append(c.out, " Z"...)
		}
		if cur.Stale {
			c.out = append(c.out, " X"...)
			if !cur.WinIssued {
				won = true
			}
		}
		if won {
			c.out = append(c.out, " W"...)
			cur.WinIssued = true
			// mg replies show the token from now on (Z): the kernel copy must not answer mg.
			op = cache.Modify
		}
		c.out = append(c.out, "\r\n"...)
		if f.value {
			c.out = append(append(c.out, cur.Value...), "\r\n"...)
		}
		if !f.noUpdate {
			cur.Fetched = true
			cur.LastAccess = now
		}
		if op == cache.Keep && c.udp && s.kernel != nil && !f.binKey {
			// A UDP hit fills the kernel cache as get's do (readKey), under the key's lock.
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
	switch {
	case tooLong:
		c.out = c.out[:mark]
		c.status = statusClientError
		c.replyErr("CLIENT_ERROR opaque token too long")
		return
	case err != nil:
		c.status = statusServerError
		c.replyErr(noMemory)
		return
	case hit:
		s.st.getHits.Add(1)
		c.status = statusHit
		return
	case created:
		// A miss that vivified an empty item: this client won the right to fill it.
		s.st.getMisses.Add(1)
		c.status = statusMiss
		if f.value {
			c.out = append(c.out, "VA 0"...)
		} else {
			c.out = append(c.out, "HD"...)
		}
		for i := 2; i < t.N; i++ {
			tok := t.Tok(i)
			switch tok[0] {
			case 's':
				c.out = append(c.out, " s0"...)
			case 't':
				c.out = append(c.out, " t"...)
				c.out = strconv.AppendInt(c.out, ttl(f.autoviv, s.store.Now().Unix()), 10)
			case 'c':
				c.out = append(c.out, " c"...)
				c.out = strconv.AppendUint(c.out, cas, 10)
			case 'f':
				c.out = append(c.out, " f0"...)
			case 'l':
				c.out = append(c.out, " l0"...)
			case 'h':
				c.out = append(c.out, " h0"...)
			case 'O':
				c.out = append(append(c.out, ' '), tok...)
			case 'k':
				c.out = appendMetaKey(c.out, key, f.binKey)
			}
		}
		c.out = append(c.out, " W\r\n"...)
		if f.value {
			c.out = append(c.out, "\r\n"...)
		}
		return
	}
	s.st.getMisses.Add(1)
	c.status = statusMiss
	line, ok := c.appendOpaqueAndKey(append(c.out, "EN"...), key, f.binKey)
	if !ok {
		c.out = c.out[:mark]
		c.replyErr("CLIENT_ERROR opaque token too long")
		return
	}
	if f.noReply {
		// Quiet mode elides the miss.
		c.out = c.out[:mark]
		return
	}
	c.out = append(line, "\r\n"...)
}

// metaSet runs "ms <key> <datalen> <flag>*" followed by a data block.
func (c *session) metaSet(data []byte) (int, action) {
	c.cmd = cmdMs
	t := &c.tok
	ntokens := t.N + 1
	if ntokens < 3 {
		c.status = statusError
		c.reply("ERROR")
		return 0, 0
	}
	vlen := announcedLen(t, 2)
	vlenOK := vlen >= 0
	reject := func(status statusID, msg string) (int, action) { return c.rejectBlock(status, c.replyErr, msg, vlen) }
	if len(t.Tok(1)) > protocol.MaxKeyLen || ntokens == 3 {
		return reject(statusClientError, badFormat)
	}
	if ntokens > metaMaxTokens {
		return reject(statusClientError, "CLIENT_ERROR options flags too long")
	}
	if !vlenOK {
		c.status = statusClientError
		c.replyErr(badFormat)
		return 0, 0
	}
	var f metaFlags
	key, errstr := c.metaParse(3, &f)
	if errstr != "" {
		return reject(statusClientError, errstr)
	}
	cmd := cmdSet
	switch f.mode {
	case 0, 'S', 's':
	case 'E', 'e':
		cmd = cmdAdd
	case 'A', 'a':
		cmd = cmdAppend
	case 'P', 'p':
		cmd = cmdPrepend
	case 'R', 'r':
		cmd = cmdReplace
	default:
		return reject(statusClientError, "CLIENT_ERROR invalid mode for ms M token")
	}
	if _, ok := c.appendOpaqueAndKey(nil, key, f.binKey); !ok {
		return reject(statusClientError, "CLIENT_ERROR opaque token too long")
	}
	value, n, act, ok := c.takeBlock(key, vlen, data, true, c.replyErr)
	if !ok {
		return n, act
	}
	s := c.s
	if s.up != nil {
		c.upMetaSet(key, value, &f)
		return n, 0
	}
	s.st.cmdSet.Add(1)
	code := "HD"
	cas, err := s.store.Do(string(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		next := &cache.Item{Value: value, Flags: f.clientFlags, Exptime: f.exptime}
		switch cmd {
		case cmdAdd:
			if cur != nil {
				code = "NS"
				return nil, cache.Keep
			}
		case cmdReplace, cmdSet:
			if f.hasCAS {
				if cur == nil {
					s.st.casMisses.Add(1)
					code = "NF"
					return nil, cache.Keep
				}
				if cur.CAS != f.cas {
					if !f.setStale || f.cas >= cur.CAS {
						s.st.casBadval.Add(1)
						code = "EX"
						return nil, cache.Keep
					}
					// An older CAS with I: store, but marked stale, keeping the TTL.
					next.Stale, next.Exptime, next.WinIssued = true, cur.Exptime, cur.WinIssued
				}
				s.st.casHits.Add(1)
			} else if cmd == cmdReplace && cur == nil {
				code = "NS"
				return nil, cache.Keep
			}
		case cmdAppend, cmdPrepend:
			if cur == nil {
				if f.vivify {
					next.Exptime = f.autoviv
					break
				}
				code = "NS"
				return nil, cache.Keep
			}
			if f.hasCAS && cur.CAS != f.cas {
				code = "EX"
				return nil, cache.Keep
			}
			if int64(len(key)+len(cur.Value)+len(value))+cache.ItemOverhead > s.cfg.MaxItemSize {
				code = "NS"
				return nil, cache.Keep
			}
			joined := make([]byte, 0, len(cur.Value)+len(value))
			if cmd == cmdAppend {
				joined = append(append(joined, cur.Value...), value...)
			} else {
				joined = append(append(joined, value...), cur.Value...)
			}
			next.Value, next.Flags, next.Exptime = joined, cur.Flags, cur.Exptime
			return next, cache.Replace
		}
		next.Value = append([]byte(nil), value...)
		return next, cache.Replace
	})
	switch {
	case errors.Is(err, cache.ErrTooLarge):
		c.status = statusServerError
		c.replyErr(tooLarge)
		return n, 0
	case err != nil:
		c.status = statusServerError
		c.replyErr(noMemory)
		return n, 0
	}
	switch code {
	case "HD":
		c.status = statusStored
	case "NS":
		c.status = statusNotStored
	case "EX":
		c.status = statusExists
	default:
		c.status = statusNotFound
	}
	if code == "HD" && f.noReply {
		return n, 0
	}
	c.out = append(c.out, code...)
	for i := 3; i < t.N; i++ {
		tok := t.Tok(i)
		switch tok[0] {
		case 'O':
			c.out = append(append(c.out, ' '), tok...)
		case 'k':
			c.out = appendMetaKey(c.out, key, f.binKey)
		case 'c':
			if code == "HD" {
				c.out = append(c.out, " c"...)
				c.out = strconv.AppendUint(c.out, cas, 10)
			}
		}
	}
	c.out = append(c.out, "\r\n"...)
	return n, 0
}

// metaDelete runs "md <key> <flag>*".
func (c *session) metaDelete(key []byte, f *metaFlags) {
	s := c.s
	code := "NF"
	_, _ = s.store.Do(str(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			return nil, cache.Keep
		}
		if f.hasCAS && cur.CAS != f.cas {
			code = "EX"
			return nil, cache.Keep
		}
		code = "HD"
		if f.setStale {
			// Invalidate: keep the value, marked stale, with a new CAS so the next client wins
			// the right to recache it.
			next := &cache.Item{Value: cur.Value, Flags: cur.Flags, Exptime: cur.Exptime, Stale: true}
			if f.newTTL {
				next.Exptime = f.exptime
			}
			return next, cache.Replace
		}
		return nil, cache.Delete
	})
	switch code {
	case "HD":
		s.st.deleteHits.Add(1)
		c.status = statusDeleted
		if f.noReply {
			return
		}
	case "EX":
		s.st.deleteMisses.Add(1)
		c.status = statusExists
	default:
		s.st.deleteMisses.Add(1)
		c.status = statusNotFound
	}
	mark := len(c.out)
	out, ok := c.appendOpaqueAndKey(append(c.out, code...), key, f.binKey)
	if !ok {
		c.out = c.out[:mark]
		c.replyErr("CLIENT_ERROR opaque token too long")
		return
	}
	c.out = append(out, "\r\n"...)
}

// metaArith runs "ma <key> <flag>*": incr (default) or decr by D (default 1), creating the item
// with J on a miss if N is given.
func (c *session) metaArith(key []byte, f *metaFlags) {
	s := c.s
	t := &c.tok
	incr := true
	switch f.mode {
	case 0, 'I', 'i', '+':
	case 'D', 'd', '-':
		incr = false
	default:
		c.status = statusClientError
		c.replyErr("CLIENT_ERROR invalid mode for ma M token")
		return
	}
	delta := uint64(1)
	for i := 2; i < t.N; i++ {
		if t.Tok(i)[0] == 'D' {
			delta = f.delta
		}
	}
	st := deltaNotFound
	created := false
	var digits []byte
	var res cache.Item
	cas, err := s.store.Do(string(key), func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur == nil {
			if !f.vivify {
				return nil, cache.Keep
			}
			created, st = true, deltaOK
			digits = strconv.AppendUint(nil, f.initial, 10)
			res = cache.Item{Value: digits, Exptime: f.autoviv}
			return &res, cache.Replace
		}
		if f.hasCAS && cur.CAS != f.cas {
			st = deltaBadCAS
			return nil, cache.Keep
		}
		v, ok := protocol.ParseUint64(cur.Value)
		if len(cur.Value) == 0 || !ok {
			st = deltaNonNumeric
			return nil, cache.Keep
		}
		switch {
		case incr:
			v += delta
		case delta > v:
			v = 0
		default:
			v -= delta
		}
		digits = strconv.AppendUint(nil, v, 10)
		nv := make([]byte, max(len(digits), len(cur.Value)))
		for i := copy(nv, digits); i < len(nv); i++ {
			nv[i] = ' '
		}
		st = deltaOK
		res = cache.Item{Value: nv, Flags: cur.Flags, Exptime: cur.Exptime}
		if f.newTTL {
			res.Exptime = f.exptime
		}
		return &res, cache.Replace
	})
	if err != nil {
		st = deltaNoMemory
	}
	switch st {
	case deltaNonNumeric:
		c.status = statusClientError
		c.replyErr(nonNumeric)
		return
	case deltaNoMemory:
		c.status = statusServerError
		c.replyErr("SERVER_ERROR out of memory")
		return
	case deltaNotFound, deltaBadCAS:
		code := "NF"
		c.status = statusNotFound
		if st == deltaBadCAS {
			code, c.status = "EX", statusExists
		} else if incr {
			s.st.incrMisses.Add(1)
		} else {
			s.st.decrMisses.Add(1)
		}
		mark := len(c.out)
		out, ok := c.appendOpaqueAndKey(append(c.out, code...), key, f.binKey)
		if !ok {
			c.out = c.out[:mark]
			c.replyErr("CLIENT_ERROR opaque token too long")
			return
		}
		c.out = append(out, "\r\n"...)
		return
	}
	if incr {
		s.st.incrHits.Add(1)
	} else {
		s.st.decrHits.Add(1)
	}
	c.status = statusOK
	// A nominal reply is elided in quiet mode, but not the one that created the item.
	if f.noReply && !created {
		return
	}
	if f.value {
		c.out = append(c.out, "VA "...)
		c.out = strconv.AppendInt(c.out, int64(len(digits)), 10)
	} else {
		c.out = append(c.out, "HD"...)
	}
	for i := 2; i < t.N; i++ {
		tok := t.Tok(i)
		switch tok[0] {
		case 'c':
			c.out = append(c.out, " c"...)
			c.out = strconv.AppendUint(c.out, cas, 10)
		case 't':
			c.out = append(c.out, " t"...)
			c.out = strconv.AppendInt(c.out, ttl(res.Exptime, s.store.Now().Unix()), 10)
		case 'O':
			c.out = append(append(c.out, ' '), tok...)
		case 'k':
			c.out = appendMetaKey(c.out, key, f.binKey)
		}
	}
	c.out = append(c.out, "\r\n"...)
	if f.value {
		c.out = append(append(c.out, digits...), "\r\n"...)
	}
}

// metaDebug runs "me <key> [b]": the item's metadata in memcached's form. The item class and
// size are ours: one class, and the bytes the store charges for the item.
func (c *session) metaDebug() {
	c.cmd = cmdMe
	t := &c.tok
	if t.N+1 < 3 || len(t.Tok(1)) > protocol.MaxKeyLen {
		c.status = statusClientError
		c.reply(badFormat)
		return
	}
	key := t.Tok(1)
	bin := t.N >= 3 && string(t.Tok(2)) == "b"
	if bin {
		n := base64.StdEncoding.DecodedLen(len(key))
		buf := make([]byte, n)
		m, err := base64.StdEncoding.Decode(buf, key)
		if err != nil || m == 0 {
			c.status = statusClientError
			c.reply("CLIENT_ERROR error decoding key")
			return
		}
		key = buf[:m]
	}
	s := c.s
	if s.up != nil {
		c.upMetaDebug(key)
		return
	}
	it, ok := c.peek(str(key))
	if !ok {
		c.status = statusMiss
		c.reply("EN")
		return
	}
	c.status = statusHit
	now := s.store.Now().Unix()
	c.out = append(c.out, "ME "...)
	if bin {
		c.out = base64.StdEncoding.AppendEncode(c.out, key)
	} else {
		c.out = append(c.out, key...)
	}
	c.out = append(c.out, " exp="...)
	c.out = strconv.AppendInt(c.out, ttl(it.Exptime, now), 10)
	c.out = append(c.out, " la="...)
	c.out = strconv.AppendInt(c.out, now-it.LastAccess, 10)
	c.out = append(c.out, " cas="...)
	c.out = strconv.AppendUint(c.out, it.CAS, 10)
	if it.Fetched {
		c.out = append(c.out, " fetch=yes"...)
	} else {
		c.out = append(c.out, " fetch=no"...)
	}
	c.out = append(c.out, " cls=1 size="...)
	c.out = strconv.AppendInt(c.out, int64(len(key)+len(it.Value))+cache.ItemOverhead, 10)
	c.out = append(c.out, "\r\n"...)
}

// peek reads an item without recording a fetch.
func (c *session) peek(key string) (cache.Item, bool) {
	var it cache.Item
	found := false
	_, _ = c.s.store.Do(key, func(cur *cache.Item) (*cache.Item, cache.Op) {
		if cur != nil {
			it, found = *cur, true
		}
		return nil, cache.Keep
	})
	return it, found
}
