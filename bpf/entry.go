package bpf

import (
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/xdpcache/xdpcache/internal/checksum"
	"github.com/xdpcache/xdpcache/internal/protocol"
)

// Kernel-side limits and layout, mirrored from c/cache_maps.h.
const (
	keyMax        = 250
	casMax        = 24
	frameLen      = protocol.FrameHeaderLen
	endLen        = len(protocol.End)
	entryHdrBytes = 40 // sizeof(struct entry_hdr); a test checks it against the generated type
	pageShift     = 16
	pageBytes     = 1 << pageShift // one arena page
	chunkMax      = 2048           // largest chunk
	maxPayload    = 1400           // MAX_PAYLOAD: largest UDP payload the program sends
)

// chunkSizes are the arena's size classes, in bytes of chunk (entry header included), growing by
// about 1.4x like memcached's slab classes, so an item wastes at most about a third of its chunk.
// The largest holds the biggest reply one datagram carries plus its gets header.
var chunkSizes = [...]int{96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048}

const numClasses = len(chunkSizes)

// classCaps are the bytes each class holds after the entry header.
var classCaps = func() (c [numClasses]int) {
	for i, s := range chunkSizes {
		c[i] = s - entryHdrBytes
	}
	return c
}()

// Key hash constants, mirrored from c/cache.c.
const (
	hashSeed = 0x243F6A8885A308D3
	hashP1   = 0x9E3779B97F4A7C15
	hashP2   = 0xFF51AFD7ED558CCD
	hashP3   = 0xC4CEB9FE1A85EC53
)

// keyHash is the hash the program computes while it scans a key, 8 bytes at a time: each
// little-endian word (the last one zero-padded) is mixed in, then the length, then murmur3's
// fmix64.
func keyHash(key string) uint64 {
	h := uint64(hashSeed)
	for i := 0; i < len(key); i += 8 {
		var w uint64
		for j := 0; j < 8 && i+j < len(key); j++ {
			w |= uint64(key[i+j]) << (8 * j)
		}
		h = (h ^ w) * hashP1
		h ^= h >> 29
	}
	h ^= uint64(len(key))
	h ^= h >> 33
	h *= hashP2
	h ^= h >> 33
	h *= hashP3
	return h ^ h>>33
}

// servableKey reports whether the program can match key: 1..250 bytes, none of them a space, "\r"
// or "\n" (the bytes that end a key in the program's scan). memcached's text protocol accepts every
// other byte in a key, and so do the server and the program.
func servableKey(key string) bool {
	return len(key) > 0 && len(key) <= keyMax && strings.IndexAny(key, " \r\n") < 0
}

// classFor returns the smallest class whose chunk holds n bytes, or -1.
func classFor(n int) int {
	for c, size := range chunkSizes {
		if n <= size {
			return c
		}
	}
	return -1
}

// encoded is an item in the form the program serves: the server's get reply bytes for it and the
// CAS text gets inserts.
type encoded struct {
	data     []byte // "VALUE <key> <flags> <bytes>\r\n<value>\r\n"
	hdrLen   int    // len("VALUE <key> <flags> <bytes>")
	cas      []byte // " <cas unique>"
	flagsLen int    // len("<flags>"), which mg's f returns
	sizeLen  int    // len("<bytes>"), which mg's v and s return
}

// encode builds the entry bytes with the same encoder the server uses, so the kernel's reply is
// the server's by construction.
func encode(key string, flags uint32, value []byte, cas uint64) encoded {
	hdr := protocol.AppendValueHeader(nil, key, flags, len(value))
	data := protocol.AppendValue(make([]byte, 0, len(hdr)+len(value)+4), key, flags, value, cas, false)
	sizeLen := len(strconv.Itoa(len(value)))
	return encoded{
		data:     data,
		hdrLen:   len(hdr),
		cas:      strconv.AppendUint([]byte{' '}, cas, 10),
		sizeLen:  sizeLen,
		flagsLen: len(hdr) - len("VALUE ") - len(key) - 2 - sizeLen,
	}
}

// Bits of entry_hdr.meta (cache_maps.h).
const (
	metaMG        = 0x8000 // mg may be answered
	metaSizeMask  = 0x7    // bytes of the size text
	metaFlagsBits = 3      // the flags text's length, from this bit
)

// meta is entry_hdr.meta for e: the lengths of its flags and size texts, and whether mg of it may
// be answered (not when the item carries meta-protocol state).
func (e encoded) meta(metaState bool) uint16 {
	m := uint16(e.sizeLen&metaSizeMask) | uint16(e.flagsLen&0x1f)<<metaFlagsBits
	if !metaState {
		m |= metaMG
	}
	return m
}

// chunkLen is the bytes of the entry in the arena: header, data, END, gets header.
func (e encoded) chunkLen() int {
	return entryHdrBytes + len(e.data) + endLen + e.hdrLen + len(e.cas)
}

// chunk lays the entry out as the program reads it (struct entry_hdr, then data with "END\r\n",
// then "VALUE <key> <flags> <bytes> <cas>"), with the precomputed checksum sums of its pieces.
func (e encoded) chunk(keyLen int, loc uint32, filled, expires uint64, metaState bool) []byte {
	getsHead := append(e.data[:e.hdrLen:e.hdrLen], e.cas...)
	h := xdpcacheEntryHdr{
		ExpiresNs:    expires,
		FilledNs:     filled,
		Len:          uint16(len(e.data)),
		HdrLen:       uint16(e.hdrLen),
		KeyLen:       uint16(keyLen),
		CasLen:       uint16(len(e.cas)),
		CsumData:     uint32(checksum.Fold(checksum.Sum(e.data))),
		CsumGetsHead: checksum.Fold(checksum.Sum(getsHead)),
		Meta:         e.meta(metaState),
		CsumTail:     uint32(checksum.Fold(checksum.Sum(e.data[e.hdrLen:]))),
		Loc:          loc,
	}
	b := make([]byte, 0, e.chunkLen())
	b, err := binary.Append(b, binary.LittleEndian, &h)
	if err != nil {
		panic("bpf: encode entry header: " + err.Error()) // a fixed-size struct cannot fail
	}
	b = append(b, e.data...)
	b = append(b, protocol.End...)
	return append(b, getsHead...)
}
