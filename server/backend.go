package server

import (
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
)

// backend carries out the requests the text and meta front ends parsed, and has the session
// reply to them. A Server picks its backend once, in New: localBackend, where the server's own
// store is the cache of record, or upstreamBackend (upstream.go), where it fronts memcached
// servers and keeps a near copy of what they hold.
//
// Each method is called with the request line still in c.tok (upstream mode forwards it).
// Requests are passed by value: through an interface, a pointer would move them to the heap on
// every request.
type backend interface {
	// get runs get, gets, gat and gats for the keys in c.keys.
	get(c *session, r getReq)
	// store runs set, add, replace, append, prepend and cas.
	store(c *session, key []byte, r storeReq)
	// arith runs incr and decr.
	arith(c *session, key []byte, r arithReq)
	// delete runs delete.
	delete(c *session, key []byte)
	// touch runs touch.
	touch(c *session, key []byte, exptime int64)
	// flushAll runs flush_all.
	flushAll(c *session, delay time.Duration)

	// metaGet, metaSet, metaDelete, metaArith and metaDebug run mg, ms, md, ma and me; key is
	// the decoded key.
	metaGet(c *session, key []byte, f metaFlags)
	metaSet(c *session, key []byte, r storeReq, f metaFlags)
	metaDelete(c *session, key []byte, f metaFlags)
	metaArith(c *session, key []byte, r arithReq, f metaFlags)
	metaDebug(c *session, key []byte, bin bool)

	// maxItemSize is the limit a storage command's key and value are held to before its data
	// block is read; 0 leaves the limit to where the item is stored (an upstream's own).
	maxItemSize() int64
	// stats are the backend's own `stats` lines.
	stats() []stat
	// close releases the backend once no connection uses it.
	close() error
}

// getReq is a parsed get, gets, gat or gats.
type getReq struct {
	withCAS bool
	// touch: gat and gats, which set the items' expiry to exptime.
	touch   bool
	exptime int64
}

// localBackend runs every request on the server's own store, through the operations layer
// (ops.go), and formats the typed results in the request's protocol.
type localBackend struct{ s *Server }

func (b localBackend) get(c *session, r getReq) {
	s := b.s
	// The hits' replies are formatted while each key is locked, straight from the store.
	req := fetchReq{touch: r.touch, exptime: r.exptime, offer: c.udp && !r.touch, reply: c, withCAS: r.withCAS}
	mark := len(c.out)
	var res fetchResult
	for _, key := range c.keys {
		// memcached looks up (and counts) the keys before a bad one, then answers with the
		// error alone.
		if len(key) > protocol.MaxKeyLen {
			c.out = c.out[:mark]
			c.clientError(badFormat)
			return
		}
		s.fetch(key, &req, &res)
		c.countGet(r.touch, res.hit)
	}
	c.out = append(c.out, protocol.End...)
}

func (b localBackend) store(c *session, key []byte, r storeReq) {
	c.replyStore(b.s.storeItem(key, &r))
}

func (b localBackend) arith(c *session, key []byte, r arithReq) {
	var buf [20]byte
	c.replyArith(b.s.arith(key, &r, buf[:0]))
}

func (b localBackend) delete(c *session, key []byte) {
	c.replyFound(b.s.deleteItem(key, &deleteReq{}) == deleteDone, statusDeleted, "DELETED")
}

func (b localBackend) touch(c *session, key []byte, exptime int64) {
	c.replyFound(b.s.touchItem(key, exptime), statusTouched, "TOUCHED")
}

func (b localBackend) flushAll(c *session, delay time.Duration) {
	b.s.flushAll(delay)
	c.status = statusOK
	c.reply("OK")
}

func (b localBackend) metaGet(c *session, key []byte, f metaFlags) {
	b.s.st.cmdGet.Add(1)
	req := f.fetchReq()
	// A UDP hit fills the kernel cache, whose programs answer mg too.
	req.offer = c.udp && !req.touch
	var res fetchResult
	b.s.fetch(key, &req, &res)
	c.replyMetaGet(key, &f, &res)
}

func (b localBackend) metaSet(c *session, key []byte, r storeReq, f metaFlags) {
	c.replyMetaSet(key, &f, b.s.storeItem(key, &r))
}

func (b localBackend) metaDelete(c *session, key []byte, f metaFlags) {
	req := f.deleteReq()
	c.replyMetaDelete(key, &f, b.s.deleteItem(key, &req))
}

func (b localBackend) metaArith(c *session, key []byte, r arithReq, f metaFlags) {
	c.replyMetaArith(key, &f, b.s.arith(key, &r, nil))
}

func (b localBackend) metaDebug(c *session, key []byte, bin bool) {
	it, ok := b.s.peek(key)
	c.replyMetaDebug(key, bin, &it, ok, b.s.store.Now().Unix())
}

func (b localBackend) maxItemSize() int64 { return b.s.cfg.MaxItemSize }
func (localBackend) stats() []stat        { return nil }
func (localBackend) close() error         { return nil }
