// Package checksum computes the Internet checksum (RFC 1071) of byte slices: the partial sums the
// kernel cache precomputes for each entry so that its programs can finish a reply's UDP checksum
// without reading the value, and the header checksums of the test packet builder.
//
// It imports nothing of the project's.
package checksum

import "encoding/binary"

// Sum is the unfolded one's-complement sum of b as big-endian 16-bit words from its first byte;
// an odd last byte counts as the high byte of a word. Sums of pieces that each start at an even
// offset add up to the sum of the whole.
func Sum(b []byte) uint64 {
	var s uint64
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// Fold folds a sum to 16 bits with end-around carry. The checksum field is its complement, ^Fold;
// a buffer whose checksum is right folds to 0xffff.
func Fold(s uint64) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
