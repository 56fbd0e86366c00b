package server

import (
	"encoding/base64"
	"strconv"

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
	// recacheAfterTTL: R came after T, so R compares the new expiry (memcached applies the
	// flags in request order).
	recacheAfterTTL           bool
	hasDelta                  bool
	exptime, autoviv, recache int64
	clientFlags               uint32
	cas, initial, delta       uint64
	mode                      byte
}

// fetchReq is mg's retrieval.
func (f *metaFlags) fetchReq() fetchReq {
	return fetchReq{
		touch: f.newTTL, exptime: f.exptime, noUpdate: f.noUpdate,
		vivify: f.vivify, vivifyExptime: f.autoviv,
		tokens: true, recache: f.hasRecache, recacheBefore: f.recache, recacheAfterTouch: f.recacheAfterTTL,
	}
}

// deleteReq is md's delete.
func (f *metaFlags) deleteReq() deleteReq {
	return deleteReq{hasCAS: f.hasCAS, cas: f.cas, stale: f.setStale, newTTL: f.newTTL, exptime: f.exptime}
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
				f.hasRecache, f.recache, f.recacheAfterTTL = true, exp, f.newTTL
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
			f.hasDelta, f.delta = true, v
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

// appendMetaHeader starts a reply that found an item: "VA <size>" when the value follows, else
// "HD".
func (c *session) appendMetaHeader(value bool, size int) {
	if !value {
		c.out = append(c.out, "HD"...)
		return
	}
	c.out = append(c.out, "VA "...)
	c.out = strconv.AppendInt(c.out, int64(size), 10)
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
	switch op {
	case 'g':
		c.s.be.metaGet(c, key, f)
	case 'd':
		c.s.be.metaDelete(c, key, f)
	case 'a':
		c.metaArith(key, &f)
	}
	return 0, 0
}

// replyMetaGet answers mg: for a hit, or an item the request created, "VA <size>" or "HD" with
// the flags the request asked for in its order, then the win flags; for a miss, "EN".
func (c *session) replyMetaGet(key []byte, f *metaFlags, res *fetchResult) {
	s := c.s
	t := &c.tok
	mark := len(c.out)
	switch {
	case res.err != nil:
		c.status = statusServerError
		c.replyErr(noMemory)
		return
	case !res.hit && !res.created:
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
		return
	}
	it := &res.item
	c.appendMetaHeader(f.value, len(it.Value))
	exptime := it.Exptime
	for i := 2; i < t.N; i++ {
		tok := t.Tok(i)
		switch tok[0] {
		case 'T':
			// t after T reports the new expiry.
			if res.hit {
				exptime = f.exptime
			}
		case 's':
			c.out = append(c.out, " s"...)
			c.out = strconv.AppendInt(c.out, int64(len(it.Value)), 10)
		case 't':
			c.out = append(c.out, " t"...)
			c.out = strconv.AppendInt(c.out, ttl(exptime, res.now), 10)
		case 'c':
			c.out = append(c.out, " c"...)
			c.out = strconv.AppendUint(c.out, it.CAS, 10)
		case 'f':
			c.out = append(c.out, " f"...)
			c.out = strconv.AppendUint(c.out, uint64(it.Flags), 10)
		case 'l':
			c.out = append(c.out, " l"...)
			c.out = strconv.AppendInt(c.out, res.now-it.LastAccess, 10)
		case 'h':
			if it.Fetched {
				c.out = append(c.out, " h1"...)
			} else {
				c.out = append(c.out, " h0"...)
			}
		case 'O':
			if len(tok) > metaMaxOpaque {
				c.out = c.out[:mark]
				c.status = statusClientError
				c.replyErr("CLIENT_ERROR opaque token too long")
				return
			}
			c.out = append(append(c.out, ' '), tok...)
		case 'k':
			c.out = appendMetaKey(c.out, key, f.binKey)
		}
	}
	if it.WinIssued {
		c.out = append(c.out, " Z"...)
	}
	if it.Stale {
		c.out = append(c.out, " X"...)
	}
	if res.won {
		c.out = append(c.out, " W"...)
	}
	c.out = append(c.out, "\r\n"...)
	if f.value {
		c.out = append(append(c.out, it.Value...), "\r\n"...)
	}
	if res.hit {
		s.st.getHits.Add(1)
		c.status = statusHit
	} else {
		// A miss that created an empty item: this client won the right to fill it.
		s.st.getMisses.Add(1)
		c.status = statusMiss
	}
}

// metaModes are ms's M tokens.
var metaModes = [256]struct {
	mode storeMode
	ok   bool
}{
	0: {modeSet, true}, 'S': {modeSet, true}, 's': {modeSet, true},
	'E': {modeAdd, true}, 'e': {modeAdd, true},
	'A': {modeAppend, true}, 'a': {modeAppend, true},
	'P': {modePrepend, true}, 'p': {modePrepend, true},
	'R': {modeReplace, true}, 'r': {modeReplace, true},
}

// metaSet parses "ms <key> <datalen> <flag>*" followed by a data block.
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
	m := metaModes[f.mode]
	if !m.ok {
		return reject(statusClientError, "CLIENT_ERROR invalid mode for ms M token")
	}
	if _, ok := c.appendOpaqueAndKey(nil, key, f.binKey); !ok {
		return reject(statusClientError, "CLIENT_ERROR opaque token too long")
	}
	value, n, act, ok := c.takeBlock(key, vlen, data, true, c.replyErr)
	if !ok {
		return n, act
	}
	// With a CAS, set and replace work as cas, as in memcached.
	r := storeReq{
		mode: m.mode, flags: f.clientFlags, exptime: f.exptime, value: value,
		hasCAS: f.hasCAS, cas: f.cas, stale: f.setStale,
		vivify: f.vivify, vivifyExptime: f.autoviv,
	}
	c.s.be.metaSet(c, key, r, f)
	return n, 0
}

// replyMetaSet answers ms: HD (with the new CAS for c), NS, EX or NF, then O and k.
func (c *session) replyMetaSet(key []byte, f *metaFlags, res storeResult) {
	var code string
	switch res.status {
	case storeStored:
		code, c.status = "HD", statusStored
	case storeNotStored:
		code, c.status = "NS", statusNotStored
	case storeExists:
		code, c.status = "EX", statusExists
	case storeNotFound:
		code, c.status = "NF", statusNotFound
	case storeTooLarge:
		c.status = statusServerError
		c.replyErr(tooLarge)
		return
	default:
		c.status = statusServerError
		c.replyErr(noMemory)
		return
	}
	if res.status == storeStored && f.noReply {
		return
	}
	t := &c.tok
	c.out = append(c.out, code...)
	for i := 3; i < t.N; i++ {
		tok := t.Tok(i)
		switch tok[0] {
		case 'O':
			c.out = append(append(c.out, ' '), tok...)
		case 'k':
			c.out = appendMetaKey(c.out, key, f.binKey)
		case 'c':
			if res.status == storeStored {
				c.out = append(c.out, " c"...)
				c.out = strconv.AppendUint(c.out, res.cas, 10)
			}
		}
	}
	c.out = append(c.out, "\r\n"...)
}

// replyMetaDelete answers md: HD, NF or EX, then O and k.
func (c *session) replyMetaDelete(key []byte, f *metaFlags, st deleteStatus) {
	code := "NF"
	switch st {
	case deleteDone:
		c.status = statusDeleted
		if f.noReply {
			return
		}
		code = "HD"
	case deleteExists:
		code, c.status = "EX", statusExists
	default:
		c.status = statusNotFound
	}
	c.replyMetaCode(code, key, f)
}

// replyMetaCode answers with code and the request's O and k flags.
func (c *session) replyMetaCode(code string, key []byte, f *metaFlags) {
	mark := len(c.out)
	out, ok := c.appendOpaqueAndKey(append(c.out, code...), key, f.binKey)
	if !ok {
		c.out = c.out[:mark]
		c.replyErr("CLIENT_ERROR opaque token too long")
		return
	}
	c.out = append(out, "\r\n"...)
}

// metaArith parses "ma <key> <flag>*": incr (default) or decr by D (default 1), creating the item
// with J on a miss if N is given.
func (c *session) metaArith(key []byte, f *metaFlags) {
	r := arithReq{
		incr: true, delta: 1, hasCAS: f.hasCAS, cas: f.cas,
		vivify: f.vivify, initial: f.initial, vivifyExptime: f.autoviv,
		newTTL: f.newTTL, exptime: f.exptime,
	}
	switch f.mode {
	case 0, 'I', 'i', '+':
	case 'D', 'd', '-':
		r.incr = false
	default:
		c.status = statusClientError
		c.replyErr("CLIENT_ERROR invalid mode for ma M token")
		return
	}
	if f.hasDelta {
		r.delta = f.delta
	}
	c.s.be.metaArith(c, key, r, *f)
}

// replyMetaArith answers ma: "VA <len>" or HD with the flags asked for, then the number for v;
// NF or EX with O and k.
func (c *session) replyMetaArith(key []byte, f *metaFlags, res arithResult) {
	switch res.status {
	case arithNonNumeric:
		c.status = statusClientError
		c.replyErr(nonNumeric)
		return
	case arithNoMemory:
		c.status = statusServerError
		c.replyErr(arithNoMem)
		return
	case arithNotFound:
		c.status = statusNotFound
		c.replyMetaCode("NF", key, f)
		return
	case arithExists:
		c.status = statusExists
		c.replyMetaCode("EX", key, f)
		return
	}
	c.status = statusOK
	// A nominal reply is elided in quiet mode, but not the one that created the item.
	if f.noReply && !res.created {
		return
	}
	t := &c.tok
	c.appendMetaHeader(f.value, len(res.digits))
	for i := 2; i < t.N; i++ {
		tok := t.Tok(i)
		switch tok[0] {
		case 'c':
			c.out = append(c.out, " c"...)
			c.out = strconv.AppendUint(c.out, res.cas, 10)
		case 't':
			c.out = append(c.out, " t"...)
			c.out = strconv.AppendInt(c.out, ttl(res.exptime, c.s.store.Now().Unix()), 10)
		case 'O':
			c.out = append(append(c.out, ' '), tok...)
		case 'k':
			c.out = appendMetaKey(c.out, key, f.binKey)
		}
	}
	c.out = append(c.out, "\r\n"...)
	if f.value {
		c.out = append(append(c.out, res.digits...), "\r\n"...)
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
	c.s.be.metaDebug(c, key, bin)
}

// replyMetaDebug answers me for the item it (found: ok) at now.
func (c *session) replyMetaDebug(key []byte, bin bool, it *cache.Item, ok bool, now int64) {
	if !ok {
		c.status = statusMiss
		c.reply("EN")
		return
	}
	c.status = statusHit
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
