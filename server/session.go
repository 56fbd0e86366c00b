package server

import (
	"bytes"
	"time"
	"unsafe"

	"github.com/xdpcache/xdpcache/cache"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// action tells the transport what to do after session.process returns.
type action int

const (
	// actDone: the request is complete; go on with the next one.
	actDone action = iota
	// actNeedMore: every complete request was handled; read more input (session.need bytes from
	// the first unconsumed byte, if set, must be buffered before the next request can run).
	actNeedMore
	// actFlush: the reply buffer is large; write it, then call process again.
	actFlush
	// actClose: write the reply buffer, then close the connection.
	actClose
)

// flushAt is the reply size at which process stops to let the transport write.
const flushAt = 256 << 10

// session is one connection's protocol state: the text and meta protocol interpreter with reused
// buffers. It is not safe for concurrent use.
type session struct {
	s   *Server
	udp bool
	tok protocol.Tokens
	// out accumulates replies until the transport writes them.
	out []byte
	// msgEnds are the ends, in out, of each request's reply (UDP sends one message per request).
	msgEnds []int
	// need is set with actNeedMore when a request needs this many bytes buffered to proceed.
	need int
	// swallow is how many bytes of a rejected data block remain to discard.
	swallow int
	// scanned is how many bytes of the unconsumed input are known to hold no newline, so that
	// a line arriving in small pieces is not rescanned from its start each time.
	scanned int
	// noreply suppresses the current request's reply (memcached's c->noreply).
	noreply bool
	// cmd and status label the current request for metrics.
	cmd    cmdID
	status statusID
	// keyBuf holds a meta request's base64-decoded key.
	keyBuf []byte
	// keys are a get request's keys.
	keys [][]byte
}

func newSession(s *Server) *session {
	return &session{s: s, out: make([]byte, 0, 4096)}
}

// reset prepares a pooled session for a new connection or datagram.
func (c *session) reset(udp bool) {
	c.udp = udp
	c.out = c.out[:0]
	c.msgEnds = c.msgEnds[:0]
	c.need, c.swallow, c.scanned, c.noreply = 0, 0, 0, false
}

func (s *Server) getSession(udp bool) *session {
	c := s.sessions.Get().(*session)
	c.reset(udp)
	return c
}

func (s *Server) putSession(c *session) {
	if cap(c.out) > 1<<20 {
		c.out = make([]byte, 0, 4096)
	}
	// The keys point into the connection's read buffer: let it go.
	clear(c.keys)
	c.keys = c.keys[:0]
	s.sessions.Put(c)
}

// str views b as a string without copying, for lookups that do not keep the key.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// reply appends a status line unless the request asked for no reply (memcached's out_string).
func (c *session) reply(line string) {
	if c.noreply {
		c.noreply = false
		return
	}
	c.out = append(c.out, line...)
	c.out = append(c.out, "\r\n"...)
}

// replyErr is memcached's out_errstring: errors are sent even under noreply (meta commands).
func (c *session) replyErr(line string) {
	c.noreply = false
	c.reply(line)
}

// announcedLen is the data block length a storage line announces in token i, when it is one
// memcached would read (0 to MaxDataLen); otherwise -1.
func announcedLen(t *protocol.Tokens, i int) int {
	if t.N <= i {
		return -1
	}
	if v, ok := protocol.ParseInt32(t.Tok(i)); ok && v >= 0 && int(v) <= protocol.MaxDataLen {
		return int(v)
	}
	return -1
}

// rejectBlock answers a rejected storage line through send (reply, or replyErr for the meta
// protocol) and discards the data block the line announced (vlen >= 0) instead of parsing it as
// commands, so the connection stays in sync (current memcached does this; 1.6.18 does not).
func (c *session) rejectBlock(status statusID, send func(string), msg string, vlen int) (int, action) {
	c.status = status
	send(msg)
	if vlen >= 0 {
		c.swallow = vlen + 2
	}
	return 0, 0
}

// takeBlock applies the item size limit to a storage line that passed its own checks and takes
// its data block from data. ok is false, with what the caller returns, when the block is not all
// there yet (actNeedMore), the item is too large (answered with SERVER_ERROR and the block
// discarded; the old value is removed first when dropOld, as memcached unlinks it), or the block
// does not end with "\r\n" (answered with a bad data chunk error). send is reply or replyErr.
// The limit is the backend's (upstream mode leaves it to the upstream).
func (c *session) takeBlock(key []byte, vlen int, data []byte, dropOld bool, send func(string)) (value []byte, n int, act action, ok bool) {
	s := c.s
	if limit := s.be.maxItemSize(); limit > 0 && int64(len(key))+int64(vlen)+cache.ItemOverhead > limit {
		s.st.storeTooLarge.Add(1)
		if dropOld {
			s.drop(key)
		}
		n, act = c.rejectBlock(statusServerError, send, tooLarge, vlen)
		return nil, n, act, false
	}
	if len(data) < vlen+2 {
		return nil, vlen + 2, actNeedMore, false
	}
	if data[vlen] != '\r' || data[vlen+1] != '\n' {
		c.status = statusClientError
		send(badChunk)
		return nil, vlen + 2, 0, false
	}
	return data[:vlen], vlen + 2, 0, true
}

// process runs every complete request at the start of in, appending replies to c.out. It returns
// how many bytes it consumed and what the transport must do next.
func (c *session) process(in []byte) (int, action) {
	pos := 0
	c.need = 0
	for {
		if c.swallow > 0 {
			k := min(c.swallow, len(in)-pos)
			pos += k
			c.swallow -= k
			if c.swallow > 0 {
				return pos, actNeedMore
			}
		}
		rest := in[pos:]
		if len(rest) == 0 {
			return pos, actNeedMore
		}
		nl := -1
		if c.scanned < len(rest) {
			if i := bytes.IndexByte(rest[c.scanned:], '\n'); i >= 0 {
				nl = c.scanned + i
			}
		}
		if nl < 0 {
			c.scanned = len(rest)
			// memcached closes a connection that sends 2 KB without a newline, unless it is a
			// long multi-key get; we bound those too.
			if len(rest) > protocol.MaxLineLen && (!protocol.LongLineAllowed(rest) || len(rest) > maxGetLine) {
				return pos, actClose
			}
			return pos, actNeedMore
		}
		var start time.Time
		if c.s.metrics != nil {
			start = time.Now()
		}
		c.cmd, c.status, c.noreply = cmdOther, statusNone, false
		used, act := c.command(protocol.TrimLine(rest[:nl+1]), rest[nl+1:])
		if act == actNeedMore {
			c.need = nl + 1 + used
			return pos, actNeedMore
		}
		pos += nl + 1 + used
		c.scanned = 0
		c.noreply = false
		if c.udp {
			c.msgEnds = append(c.msgEnds, len(c.out))
		}
		if c.s.metrics != nil {
			proto := protoTCP
			if c.udp {
				proto = protoUDP
			}
			c.s.metrics.observe(proto, c.cmd, c.status, start)
		}
		if act == actClose {
			return pos, actClose
		}
		if len(c.out) >= flushAt && !c.udp {
			return pos, actFlush
		}
	}
}

// command runs one request line; data is the input after the line. It returns how many bytes of
// data the request consumed (with actNeedMore: how many it needs).
func (c *session) command(line, data []byte) (int, action) {
	t := &c.tok
	t.Tokenize(line)
	// memcached: every command needs a token of at least two bytes.
	if t.N == 0 || len(t.Tok(0)) < 2 {
		c.status = statusError
		c.reply("ERROR")
		return 0, 0
	}
	name := t.Tok(0)
	if name[0] == 'm' && len(name) == 2 {
		return c.meta(name[1], data)
	}
	// ntokens is memcached's count, which includes a terminal token.
	ntokens := t.N + 1
	switch name[0] {
	case 'g':
		if ntokens < 3 {
			break
		}
		switch string(name) {
		case "get":
			c.get(cmdGet, false, false)
			return 0, 0
		case "gets":
			c.get(cmdGets, true, false)
			return 0, 0
		case "gat":
			c.get(cmdGat, false, true)
			return 0, 0
		case "gats":
			c.get(cmdGats, true, true)
			return 0, 0
		}
	case 's':
		switch string(name) {
		case "set":
			return c.update(cmdSet, data)
		case "stats":
			c.cmd = cmdStats
			c.stats()
			return 0, 0
		case "shutdown":
			c.reply("ERROR: shutdown not enabled")
			return 0, 0
		case "slabs":
			c.slabs()
			return 0, 0
		}
	case 'a':
		switch string(name) {
		case "add":
			return c.update(cmdAdd, data)
		case "append":
			return c.update(cmdAppend, data)
		}
	case 'c':
		if string(name) == "cas" {
			return c.update(cmdCas, data)
		}
	case 'i':
		if string(name) == "incr" && (ntokens == 4 || ntokens == 5) {
			c.arith(cmdIncr)
			return 0, 0
		}
	case 'd':
		switch string(name) {
		case "delete":
			if ntokens >= 3 && ntokens <= 5 {
				c.delete()
				return 0, 0
			}
		case "decr":
			if ntokens == 4 || ntokens == 5 {
				c.arith(cmdDecr)
				return 0, 0
			}
		}
	case 't':
		if string(name) == "touch" && (ntokens == 4 || ntokens == 5) {
			c.touch()
			return 0, 0
		}
	default:
		switch string(name) {
		case "replace":
			return c.update(cmdReplace, data)
		case "prepend":
			return c.update(cmdPrepend, data)
		case "flush_all":
			if ntokens >= 2 && ntokens <= 4 {
				c.flushAll()
				return 0, 0
			}
		case "version":
			c.cmd, c.status = cmdVersion, statusOK
			c.out = append(c.out, "VERSION "+ProtocolVersion...)
			if v := c.s.cfg.Version; v != "" {
				c.out = append(c.out, ' ')
				c.out = append(c.out, v...)
			}
			c.out = append(c.out, "\r\n"...)
			return 0, 0
		case "quit":
			c.cmd = cmdQuit
			return 0, actClose
		case "verbosity":
			if ntokens == 3 || ntokens == 4 {
				c.verbosity()
				return 0, 0
			}
		default:
			// memcached hangs up on what looks like an HTTP request.
			if bytes.HasPrefix(t.Tok(t.N-1), []byte("HTTP/")) {
				return 0, actClose
			}
		}
	}
	c.status = statusError
	c.reply("ERROR")
	return 0, 0
}
