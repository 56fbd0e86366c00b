package protocol

import (
	"encoding/binary"
	"errors"
)

// FrameHeaderLen is the size of the header memcached puts in front of every UDP datagram.
const FrameHeaderLen = 8

// MaxDatagram is the largest UDP payload, frame header included, that memcached sends in one datagram.
const MaxDatagram = 1400

// ErrShortFrame means a datagram is too short to carry a frame header.
var ErrShortFrame = errors.New("protocol: datagram shorter than the frame header")

// FrameHeader is memcached's UDP frame header: a request id the client picks and the server echoes,
// the sequence number of this datagram within the message, the number of datagrams in the message,
// and two reserved bytes (zero). All fields are big-endian on the wire.
type FrameHeader struct {
	RequestID uint16
	Seq       uint16
	Total     uint16
	Reserved  uint16
}

// ParseFrameHeader reads the frame header at the start of b.
func ParseFrameHeader(b []byte) (FrameHeader, error) {
	if len(b) < FrameHeaderLen {
		return FrameHeader{}, ErrShortFrame
	}
	return FrameHeader{
		RequestID: binary.BigEndian.Uint16(b[0:]),
		Seq:       binary.BigEndian.Uint16(b[2:]),
		Total:     binary.BigEndian.Uint16(b[4:]),
		Reserved:  binary.BigEndian.Uint16(b[6:]),
	}, nil
}

// AppendTo appends the header's 8 wire bytes to b.
func (h FrameHeader) AppendTo(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, h.RequestID)
	b = binary.BigEndian.AppendUint16(b, h.Seq)
	b = binary.BigEndian.AppendUint16(b, h.Total)
	return binary.BigEndian.AppendUint16(b, h.Reserved)
}

// SplitReply frames a whole reply message as memcached does: datagrams of at most maxDatagram bytes,
// header included, numbered 0..n-1, each carrying the total n. An empty reply yields no datagrams.
// maxDatagram values that leave no room for payload are raised to MaxDatagram.
func SplitReply(requestID uint16, reply []byte, maxDatagram int) [][]byte {
	if len(reply) == 0 {
		return nil
	}
	if maxDatagram <= FrameHeaderLen {
		maxDatagram = MaxDatagram
	}
	chunk := maxDatagram - FrameHeaderLen
	n := (len(reply) + chunk - 1) / chunk
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		lo, hi := i*chunk, min((i+1)*chunk, len(reply))
		d := make([]byte, 0, FrameHeaderLen+hi-lo)
		d = FrameHeader{RequestID: requestID, Seq: uint16(i), Total: uint16(n)}.AppendTo(d)
		out = append(out, append(d, reply[lo:hi]...))
	}
	return out
}
