package takeover

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The control protocol runs over one unix stream connection. Every message is a frame: one kind
// byte, a 4-byte big-endian length, and that many bytes. Frames that carry descriptors
// (SCM_RIGHTS) carry them on their first byte; every frame is read exactly, never ahead, so
// that no descriptor arrives with bytes read by a plain read (which would drop it).

// Frame kinds.
const (
	kindHello      byte = 'H' // new -> old: hello (JSON)
	kindRefuse     byte = 'R' // old -> new: refusal (JSON), then close
	kindOffer      byte = 'O' // old -> new: offer (JSON); files follow in kindFiles frames
	kindFiles      byte = 'F' // old -> new: a batch of descriptors; payload: their count (4 bytes)
	kindKernelKeys byte = 'K' // old -> new: keys of the kernel cache, records of (u16 len, key)
	kindPreItems   byte = 'P' // old -> new: items copied while the old process still serves (before its offer)
	kindPreEnd     byte = 'Q' // old -> new: the copy is complete
	kindCopied     byte = 'A' // new -> old: the copy is installed: the old process may stop serving
	kindItems      byte = 'I' // old -> new: items, records (see appendItem)
	kindDeleted    byte = 'X' // old -> new: keys gone since the copy, records as kindKernelKeys
	kindReset      byte = 'Z' // old -> new: drop the copy (a flush_all came meanwhile); all items follow
	kindEnd        byte = 'E' // old -> new: nothing more
	kindDone       byte = 'D' // new -> old: ready to serve, or why not (JSON)
	kindCommit     byte = 'C' // old -> new: serve; the old process will not serve again
)

// maxFrame bounds a frame's payload: a batch of items, or one item of up to 1 MiB and its key
// (an item larger than maxFrame is sent alone in a frame that fits it, see maxItemFrame).
const maxFrame = 4 << 20

// maxItemFrame bounds a frame holding one item: the largest item memcached's -I allows (1 GiB
// is the flag's ceiling; serve's default is 1 MiB) plus its record.
const maxItemFrame = 1<<30 + 1024

// filesPerFrame is how many descriptors one frame carries; the kernel's limit is 253.
const filesPerFrame = 200

// errProtocol marks a peer that does not follow the protocol.
var errProtocol = errors.New("takeover: protocol error")

func writeFrame(w io.Writer, kind byte, payload []byte) error {
	var h [5]byte
	h[0] = kind
	binary.BigEndian.PutUint32(h[1:], uint32(len(payload)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	if len(payload) == 0 {
		// No write at all: the peer may act on the header alone and close, and a write of
		// nothing to a closed socket still fails.
		return nil
	}
	_, err := w.Write(payload)
	return err
}

func writeJSON(w io.Writer, kind byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFrame(w, kind, b)
}

// readFrame reads one frame of at most limit bytes.
func readFrame(r io.Reader, limit int) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if int64(n) > int64(limit) {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes", errProtocol, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, err
	}
	return h[0], b, nil
}

// expectJSON reads a frame of kind want into v; a refusal comes back as its reason.
func expectJSON(r io.Reader, want byte, v any) error {
	kind, b, err := readFrame(r, maxFrame)
	if err != nil {
		return err
	}
	return decodeJSON(kind, b, want, v)
}

// decodeJSON reads a frame of kind with payload b, which must be want (or a refusal, returned as
// an error), into v.
func decodeJSON(kind byte, b []byte, want byte, v any) error {
	if kind == kindRefuse && want != kindRefuse {
		var rf refusal
		if err := json.Unmarshal(b, &rf); err != nil {
			return fmt.Errorf("%w: refusal: %w", errProtocol, err)
		}
		return fmt.Errorf("refused: %s", rf.Reason)
	}
	if kind != want {
		return fmt.Errorf("%w: frame %q, want %q", errProtocol, kind, want)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %q frame: %w", errProtocol, kind, err)
	}
	return nil
}

// sendFiles sends files in frames of at most filesPerFrame descriptors.
func sendFiles(c *net.UnixConn, files []*os.File) error {
	for len(files) > 0 {
		n := min(len(files), filesPerFrame)
		fds := make([]int, n)
		for i, f := range files[:n] {
			fds[i] = int(f.Fd())
		}
		var p [9]byte
		p[0] = kindFiles
		binary.BigEndian.PutUint32(p[1:5], 4)
		binary.BigEndian.PutUint32(p[5:], uint32(n))
		if _, _, err := c.WriteMsgUnix(p[:], unix.UnixRights(fds...), nil); err != nil {
			return fmt.Errorf("send descriptors: %w", err)
		}
		files = files[n:]
	}
	return nil
}

// recvFiles receives want descriptors sent by sendFiles.
func recvFiles(c *net.UnixConn, want int) (files []*os.File, err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	for len(files) < want {
		var p [9]byte
		oob := make([]byte, unix.CmsgSpace(4*filesPerFrame))
		n, oobn, flags, _, err := c.ReadMsgUnix(p[:5], oob)
		if err != nil {
			return files, fmt.Errorf("receive descriptors: %w", err)
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return files, fmt.Errorf("%w: descriptors truncated", errProtocol)
		}
		fds, err := parseRights(oob[:oobn])
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "takeover"))
		}
		if err != nil {
			return files, err
		}
		if n != 5 || p[0] != kindFiles {
			return files, fmt.Errorf("%w: descriptor frame %q", errProtocol, p[0])
		}
		if _, err := io.ReadFull(c, p[5:]); err != nil {
			return files, err
		}
		if got := binary.BigEndian.Uint32(p[5:]); int(got) != len(fds) {
			return files, fmt.Errorf("%w: frame says %d descriptors, %d came", errProtocol, got, len(fds))
		}
	}
	if len(files) != want {
		return files, fmt.Errorf("%w: %d descriptors, want %d", errProtocol, len(files), want)
	}
	return files, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, fmt.Errorf("parse descriptors: %w", err)
		}
		for _, fd := range got {
			unix.CloseOnExec(fd)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// peerUID is the user id of the process at the other end of c.
func peerUID(c *net.UnixConn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return cred.Uid, nil
}

var _ syscall.Conn = (*net.UnixConn)(nil)
