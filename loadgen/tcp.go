package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/loadgen/workload"
)

// tcpPending is one request written on a TCP connection; replies come back in request order.
type tcpPending struct {
	intended int64
	sent     int64
	key      uint64
	kind     opKind
	expired  bool // already counted as a timeout; its reply is read and dropped
}

// tcpTransport speaks the text protocol on one connection, pipelined: the sender writes each
// batch with one write, the receiver matches replies to requests in order.
type tcpTransport struct {
	w    *worker
	conn net.Conn
	ks   *workload.KeySpace
	val  valueSource

	mu      sync.Mutex
	fifo    []tcpPending
	hd      int
	expired int // entries counted as timeouts but not yet answered

	wbuf   []byte // sender-owned
	br     *bufio.Reader
	keyBuf []byte
}

func newTCPTransport(w *worker, conn net.Conn, ks *workload.KeySpace, val valueSource) *tcpTransport {
	// The reader holds a whole reply before consuming it: room for the largest value.
	size := max(64<<10, len(val)+1024)
	return &tcpTransport{w: w, conn: conn, ks: ks, val: val, br: bufio.NewReaderSize(conn, size)}
}

func (t *tcpTransport) send(ops []op, now int64) error {
	t.wbuf = t.wbuf[:0]
	for i := range ops {
		t.wbuf = appendRequest(t.wbuf, &ops[i], t.ks, t.val)
	}
	// Queue before writing: the reply may be read before Write returns.
	t.mu.Lock()
	for i := range ops {
		t.fifo = append(t.fifo, tcpPending{intended: ops[i].intended, sent: now, key: ops[i].key, kind: ops[i].kind})
	}
	t.mu.Unlock()
	if _, err := t.conn.Write(t.wbuf); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("write requests: %w", err)
	}
	return nil
}

func (t *tcpTransport) receive() error {
	for {
		if err := t.conn.SetReadDeadline(time.Now().Add(sweepEvery)); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("set read deadline: %w", err)
		}
		class, key, err := t.readReply()
		now := t.w.ctl.now()
		var ne net.Error
		switch {
		case err == nil || errors.Is(err, errReply):
			t.matchReply(class, key, err == nil, now)
		case errors.As(err, &ne) && ne.Timeout():
			// readReply consumes only whole replies, so the deadline never cuts one in half.
			t.sweep(now)
		case errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF):
			return nil
		default:
			return fmt.Errorf("read replies: %w", err)
		}
	}
}

var errReply = errors.New("loadgen: error reply")

// readReply reads one whole reply. It only consumes input once the whole reply is buffered, so a
// read deadline never leaves it halfway through one.
func (t *tcpTransport) readReply() (Class, []byte, error) {
	for {
		buf, _ := t.br.Peek(t.br.Buffered())
		n, class, key, err := parseReply(buf)
		if n > 0 {
			key = append(t.keyBuf[:0], key...)
			t.keyBuf = key
			if _, derr := t.br.Discard(n); derr != nil {
				return 0, nil, fmt.Errorf("consume reply: %w", derr)
			}
			return class, key, err
		}
		if err != nil {
			return 0, nil, err
		}
		if t.br.Buffered() == t.br.Size() {
			return 0, nil, fmt.Errorf("read replies: reply over %d bytes", t.br.Size())
		}
		// Need more bytes: Peek past the buffered ones blocks for at least one more.
		if _, err := t.br.Peek(t.br.Buffered() + 1); err != nil {
			return 0, nil, err
		}
	}
}

// parseReply parses one reply at the start of buf. n is 0 when buf holds only part of it.
func parseReply(buf []byte) (n int, class Class, key []byte, err error) {
	line, _, ok := protocol.CutLine(buf)
	if !ok {
		return 0, 0, nil, nil
	}
	after := len(line) + 2
	switch {
	case bytes.HasPrefix(line, []byte("VALUE ")):
		v, ok := protocol.ParseValueLine(line)
		if !ok {
			return after, 0, nil, errReply
		}
		end := after + v.Size + 2 + len(protocol.End)
		if len(buf) < end {
			return 0, 0, nil, nil
		}
		if string(buf[after+v.Size:end]) != "\r\n"+protocol.End {
			return end, 0, nil, errReply
		}
		return end, UserHit, v.Key, nil
	case string(line) == "END":
		return after, UserMiss, nil, nil
	case string(line) == "STORED":
		return after, Set, nil, nil
	}
	// ERROR, CLIENT_ERROR ..., SERVER_ERROR ..., or anything unexpected.
	return after, 0, nil, errReply
}

func (t *tcpTransport) matchReply(class Class, key []byte, ok bool, now int64) {
	t.mu.Lock()
	if t.hd == len(t.fifo) {
		t.mu.Unlock()
		t.w.fail(now) // a reply nobody asked for
		return
	}
	p := t.fifo[t.hd]
	t.hd++
	if p.expired {
		t.expired--
	}
	t.compactLocked()
	t.mu.Unlock()
	if p.expired {
		return
	}
	switch {
	case !ok,
		p.kind == opSet && class != Set,
		p.kind == opGet && class == Set:
		t.w.fail(p.intended)
	case class == UserHit && !bytes.Equal(key, t.ks.Append(t.keyBuf[len(t.keyBuf):], p.key)):
		t.w.fail(p.intended)
	case now-p.sent > t.w.ctl.timeoutNs:
		// A stream cannot lose a reply, but one slower than the timeout counts as a timeout, as
		// it would over UDP.
		t.w.timeout(p.intended)
	default:
		t.w.complete(class, p.intended, now)
	}
}

func (t *tcpTransport) compactLocked() {
	if t.hd == len(t.fifo) {
		t.fifo, t.hd = t.fifo[:0], 0
	} else if t.hd > 1024 && t.hd*2 > len(t.fifo) {
		t.fifo = t.fifo[:copy(t.fifo, t.fifo[t.hd:])]
		t.hd = 0
	}
}

// sweep counts requests unanswered past the timeout; their replies, if they come, are dropped.
func (t *tcpTransport) sweep(now int64) {
	var expired []int64
	t.mu.Lock()
	for i := t.hd; i < len(t.fifo); i++ {
		p := &t.fifo[i]
		if now-p.sent < t.w.ctl.timeoutNs {
			break
		}
		if !p.expired {
			p.expired = true
			t.expired++
			expired = append(expired, p.intended)
		}
	}
	t.mu.Unlock()
	for _, in := range expired {
		t.w.timeout(in)
	}
}

// poll does nothing: TCP replies are read by the receiver only, in stream order.
func (t *tcpTransport) poll() {}

func (t *tcpTransport) outstanding() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.fifo) - t.hd - t.expired
}

func (t *tcpTransport) expireAll() {
	var expired []int64
	t.mu.Lock()
	for i := t.hd; i < len(t.fifo); i++ {
		if !t.fifo[i].expired {
			expired = append(expired, t.fifo[i].intended)
		}
	}
	t.fifo, t.hd, t.expired = t.fifo[:0], 0, 0
	t.mu.Unlock()
	for _, in := range expired {
		t.w.timeout(in)
	}
}

func (t *tcpTransport) close() error {
	if err := t.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close TCP connection: %w", err)
	}
	return nil
}
