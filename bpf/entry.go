package bpf

import (
	"strconv"

	"github.com/xdpcache/xdpcache/internal/packet"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// Kernel-side limits, mirrored from c/cache_maps.h.
const (
	keyMax        = 250
	casMax        = 24
	frameLen      = protocol.FrameHeaderLen
	endLen        = len(protocol.End)
	entryHdrBytes = 64 // sizeof(struct entry_hdr)
)

// classCaps are the data capacities of the size classes, indexed by enum entry_class.
var classCaps = [...]int{128, 256, 512, 1024, 1392}

const numClasses = len(classCaps)

// fnv1a is the key hash the program computes while it scans a key (FNV-1a, 64 bit).
func fnv1a(key string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 0x100000001b3
	}
	return h
}

// servableKey reports whether the program can match key: 1..250 bytes of printable ASCII, the only
// keys it accepts in a request.
func servableKey(key string) bool {
	if len(key) == 0 || len(key) > keyMax {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return false
		}
	}
	return true
}

// classFor returns the smallest class holding n data bytes, or -1.
func classFor(n int) int {
	for c, capacity := range classCaps {
		if n <= capacity {
			return c
		}
	}
	return -1
}

// encoded is an item in the form the program serves: the server's get reply bytes for it and the
// CAS text gets inserts, with their precomputed checksum sums.
type encoded struct {
	data   []byte // "VALUE <key> <flags> <bytes>\r\n<value>\r\n"
	hdrLen int    // len("VALUE <key> <flags> <bytes>")
	cas    []byte // " <cas unique>"
}

// encode builds the entry bytes with the same encoder the server uses, so the kernel's reply is
// the server's by construction.
func encode(key string, flags uint32, value []byte, cas uint64) encoded {
	hdr := protocol.AppendValueHeader(nil, key, flags, len(value))
	data := protocol.AppendValue(make([]byte, 0, len(hdr)+len(value)+4), key, flags, value, cas, false)
	return encoded{
		data:   data,
		hdrLen: len(hdr),
		cas:    strconv.AppendUint([]byte{' '}, cas, 10),
	}
}

// header fills the fixed part of an entry for a key of keyLen bytes.
func (e encoded) header(keyLen int, filled, expires uint64) xdpcacheEntryHdr {
	h := xdpcacheEntryHdr{
		ExpiresNs: expires,
		FilledNs:  filled,
		Len:       uint16(len(e.data)),
		HdrLen:    uint16(e.hdrLen),
		KeyLen:    uint16(keyLen),
		CasLen:    uint16(len(e.cas)),
		CsumData:  uint32(packet.Fold(packet.Sum(e.data))),
		CsumHead:  uint32(packet.Fold(packet.Sum(e.data[:e.hdrLen]))),
		CsumTail:  uint32(packet.Fold(packet.Sum(e.data[e.hdrLen:]))),
		CsumCas:   uint32(packet.Fold(packet.Sum(e.cas))),
	}
	copy(h.Cas[:], e.cas)
	return h
}

// entryValue returns the map value for class c.
func entryValue(c int, h xdpcacheEntryHdr, data []byte) any {
	switch c {
	case 0:
		v := &xdpcacheEntry128{H: h}
		copy(v.Data[:], data)
		return v
	case 1:
		v := &xdpcacheEntry256{H: h}
		copy(v.Data[:], data)
		return v
	case 2:
		v := &xdpcacheEntry512{H: h}
		copy(v.Data[:], data)
		return v
	case 3:
		v := &xdpcacheEntry1024{H: h}
		copy(v.Data[:], data)
		return v
	default:
		v := &xdpcacheEntry1392{H: h}
		copy(v.Data[:], data)
		return v
	}
}
