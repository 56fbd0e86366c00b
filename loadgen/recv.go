package loadgen

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr of recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// recvBatch reads datagrams with recvmmsg(2) into fixed buffers, never blocking itself: the
// receiver goroutine waits for readability in Go's netpoller, and the sender drains the socket
// between its own sends (see udpTransport.poll). x/net's ReadBatch cannot do the latter: it always
// waits when the socket is empty.
type recvBatch struct {
	rc    syscall.RawConn
	hdrs  []mmsghdr
	iov   []unix.Iovec
	bufs  [][]byte
	ctrls [][]byte
	n     int
}

func newRecvBatch(conn *net.UDPConn, batch, bufSize int) (*recvBatch, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("get raw socket: %w", err)
	}
	r := &recvBatch{rc: rc, hdrs: make([]mmsghdr, batch), iov: make([]unix.Iovec, batch),
		bufs: make([][]byte, batch), ctrls: make([][]byte, batch)}
	for i := range r.hdrs {
		r.bufs[i] = make([]byte, bufSize)
		r.ctrls[i] = make([]byte, 128)
		r.iov[i].Base = &r.bufs[i][0]
		r.iov[i].SetLen(bufSize)
		r.hdrs[i].hdr.Iov = &r.iov[i]
		r.hdrs[i].hdr.SetIovlen(1)
		r.hdrs[i].hdr.Control = &r.ctrls[i][0]
	}
	return r, nil
}

// recvmmsg reads what is queued, up to the batch, without waiting. It returns 0 and EAGAIN when
// nothing is.
func (r *recvBatch) recvmmsg(fd uintptr) (int, error) {
	for i := range r.hdrs {
		r.hdrs[i].hdr.SetControllen(len(r.ctrls[i]))
		r.hdrs[i].hdr.Flags = 0
		r.hdrs[i].len = 0
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)),
			unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

func (r *recvBatch) datagram(i int) (payload, oob []byte) {
	return r.bufs[i][:r.hdrs[i].len], r.ctrls[i][:r.hdrs[i].hdr.Controllen]
}

// wait blocks in the netpoller until datagrams arrive (or the read deadline passes) and hands
// the batch read to handle. mu guards the buffers against a concurrent drain: it is held while
// reading and handling, never while waiting.
func (r *recvBatch) wait(mu *sync.Mutex, handle func(n int)) error {
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		mu.Lock()
		defer mu.Unlock()
		n, err := r.recvmmsg(fd)
		if errors.Is(err, unix.EAGAIN) {
			return false // wait for readability
		}
		if err != nil {
			rerr = err
			return true
		}
		handle(n)
		return true
	})
	if err != nil {
		return err
	}
	return rerr
}

// drain reads and handles whatever is queued now, without waiting, up to rounds batches. The
// caller holds the mutex it passes to wait.
func (r *recvBatch) drain(rounds int, handle func(n int)) error {
	var rerr error
	err := r.rc.Control(func(fd uintptr) {
		for range rounds {
			n, err := r.recvmmsg(fd)
			if err != nil {
				if !errors.Is(err, unix.EAGAIN) {
					rerr = err
				}
				return
			}
			handle(n)
			if n < len(r.hdrs) {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return rerr
}
