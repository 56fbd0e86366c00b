package server

import (
	"bytes"
	"errors"
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
	arithNoMem  = "SERVER_ERROR out of memory"
)

// get parses get, gets, gat and gats: "get <key>*", "gat <exptime> <key>*". The keys go to
// c.keys.
func (c *session) get(cmd cmdID, withCAS, touch bool) {
	c.cmd = cmd
	t := &c.tok
	r := getReq{withCAS: withCAS, touch: touch}
	first := 1
	if touch {
		raw, ok := protocol.ParseInt32(t.Tok(1))
		if !ok {
			c.clientError(badExptime)
			return
		}
		r.exptime = c.s.store.Exptime(int64(raw))
		first = 2
	}
	c.keys = c.keys[:0]
	for i := first; i < t.N; i++ {
		c.keys = append(c.keys, t.Tok(i))
	}
	// Keys beyond memcached's token limit: split the rest of the line the same way, on spaces.
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
		c.keys = append(c.keys, rest[:end])
		rest = rest[end:]
	}
	c.s.be.get(c, r)
}

// appendValue appends one hit's VALUE lines.
func (c *session) appendValue(key []byte, it *cache.Item, withCAS bool) {
	c.out = protocol.AppendValue(c.out, str(key), it.Flags, it.Value, it.CAS, withCAS)
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

// textModes are the storage commands' modes.
var textModes = [numCmds]storeMode{cmdSet: modeSet, cmdAdd: modeAdd, cmdReplace: modeReplace,
	cmdAppend: modeAppend, cmdPrepend: modePrepend, cmdCas: modeSet}

// update parses the storage commands: "<cmd> <key> <flags> <exptime> <bytes> [<cas>] [noreply]"
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
	r := storeReq{mode: textModes[cmd], flags: flags, hasCAS: isCAS}
	if isCAS {
		v, ok := protocol.ParseUint64(t.Tok(5))
		if !ok {
			return reject(statusClientError, badFormat)
		}
		r.cas = v
	}
	// A failed set must not leave the older value readable (memcached unlinks it).
	value, n, act, ok := c.takeBlock(key, vlen, data, cmd == cmdSet, c.reply)
	if !ok {
		return n, act
	}
	r.exptime, r.value = c.s.store.Exptime(int64(rawExp)), value
	c.s.be.store(c, key, r)
	return n, 0
}

// storeReplies are the storage commands' replies by outcome.
var storeReplies = [...]struct {
	status statusID
	line   string
}{
	storeStored:    {statusStored, "STORED"},
	storeNotStored: {statusNotStored, "NOT_STORED"},
	storeExists:    {statusExists, "EXISTS"},
	storeNotFound:  {statusNotFound, "NOT_FOUND"},
	storeTooLarge:  {statusServerError, tooLarge},
	storeNoMemory:  {statusServerError, noMemory},
}

// replyStore answers a storage command.
func (c *session) replyStore(res storeResult) {
	r := storeReplies[res.status]
	c.status = r.status
	c.reply(r.line)
}

// arith parses "incr|decr <key> <delta> [noreply]".
func (c *session) arith(cmd cmdID) {
	key, ok := c.keyLine(cmd)
	if !ok {
		return
	}
	delta, ok := protocol.ParseUint64(c.tok.Tok(2))
	if !ok {
		c.clientError(badDelta)
		return
	}
	c.s.be.arith(c, key, arithReq{incr: cmd == cmdIncr, delta: delta})
}

// replyArith answers incr or decr.
func (c *session) replyArith(res arithResult) {
	switch res.status {
	case arithOK:
		c.status = statusOK
		if !c.noreply {
			c.out = append(c.out, res.digits...)
			c.out = append(c.out, "\r\n"...)
		}
		c.noreply = false
	case arithNotFound:
		c.status = statusNotFound
		c.reply("NOT_FOUND")
	case arithNonNumeric:
		c.clientError(nonNumeric)
	case arithExists:
		c.status = statusExists
		c.reply("EXISTS")
	default:
		c.status = statusServerError
		c.reply(arithNoMem)
	}
}

// delete parses "delete <key> [0] [noreply]".
func (c *session) delete() {
	c.cmd = cmdDelete
	t := &c.tok
	if t.N > 2 {
		holdZero := string(t.Tok(2)) == "0"
		c.noreply = t.NoReply()
		if !((t.N == 3 && (holdZero || c.noreply)) || (t.N == 4 && holdZero && c.noreply)) {
			c.clientError(deleteUsage)
			return
		}
	}
	key, ok := c.keyToken()
	if !ok {
		return
	}
	c.s.be.delete(c, key)
}

// replyFound answers delete and touch: word with status when the key had an item, else
// NOT_FOUND.
func (c *session) replyFound(found bool, status statusID, word string) {
	if !found {
		status, word = statusNotFound, "NOT_FOUND"
	}
	c.status = status
	c.reply(word)
}

// touch parses "touch <key> <exptime> [noreply]".
func (c *session) touch() {
	key, ok := c.keyLine(cmdTouch)
	if !ok {
		return
	}
	raw, ok := protocol.ParseInt32(c.tok.Tok(2))
	if !ok {
		c.clientError(badExptime)
		return
	}
	s := c.s
	s.st.cmdTouch.Add(1)
	s.be.touch(c, key, s.store.Exptime(int64(raw)))
}

// flushAll parses "flush_all [delay] [noreply]".
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
			c.clientError(badExptime)
			return
		}
		raw = v
	}
	var delay time.Duration
	if raw > 0 {
		// Relative up to 30 days, absolute beyond, like an exptime.
		delay = time.Duration(s.store.Exptime(int64(raw))-s.store.Now().Unix()) * time.Second
	}
	s.be.flushAll(c, delay)
}

// verbosity runs "verbosity <level> [noreply]"; the level is only remembered.
func (c *session) verbosity() {
	c.cmd = cmdVerbosity
	t := &c.tok
	c.noreply = t.NoReply()
	level, ok := protocol.ParseUint32(t.Tok(1))
	if !ok {
		c.clientError(badFormat)
		return
	}
	c.s.verbosity.Store(min(level, 2))
	c.status = statusOK
	c.reply("OK")
}

// slabs runs memcached's "slabs automove <0|1|2>", "slabs automove ratio <ratio>" and "slabs
// reassign <src> <dst>" with memcached 1.6.18's replies, token counts and number parsing, on the
// store's slab classes (cache.Store.SetAutomove, cache.Store.Reassign). The ratio is checked and
// acknowledged: the store's automover has no ratio setting.
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
			c.clientError(badFormat)
			return
		}
		if level > 2 {
			c.status = statusError
			c.reply("ERROR")
			return
		}
		c.s.store.SetAutomove(int(level))
	}
	c.status = statusOK
	c.reply("OK")
}

func (c *session) slabsReassign() {
	t := &c.tok
	src, ok1 := protocol.ParseInt32(t.Tok(2))
	dst, ok2 := protocol.ParseInt32(t.Tok(3))
	if !ok1 || !ok2 {
		c.clientError(badFormat)
		return
	}
	switch err := c.s.store.Reassign(int(src), int(dst)); {
	case err == nil:
		c.status = statusOK
		c.reply("OK")
	case errors.Is(err, cache.ErrSameClass):
		c.clientError("SAME src and dst class are identical")
	case errors.Is(err, cache.ErrBadClass):
		c.clientError("BADCLASS invalid src or dst class id")
	case errors.Is(err, cache.ErrNoSpare):
		c.status = statusServerError
		c.reply("NOSPARE source class has no spare pages")
	default: // cache.ErrBusy
		c.status = statusServerError
		c.reply("BUSY try again later")
	}
}

// clientError answers a malformed request with msg, a CLIENT_ERROR line.
func (c *session) clientError(msg string) {
	c.status = statusClientError
	c.reply(msg)
}

// keyLine starts a "<cmd> <key> <arg> [noreply]" line: it labels the request, notes noreply
// and returns the key as keyToken does.
func (c *session) keyLine(cmd cmdID) ([]byte, bool) {
	c.cmd = cmd
	c.noreply = c.tok.NoReply()
	return c.keyToken()
}

// keyToken returns token 1 as a key, or false after answering a key over 250 bytes as memcached
// does.
func (c *session) keyToken() ([]byte, bool) {
	key := c.tok.Tok(1)
	if len(key) > protocol.MaxKeyLen {
		c.clientError(badFormat)
		return nil, false
	}
	return key, true
}
