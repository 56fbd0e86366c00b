package loadgen

import (
	"math/rand/v2"
	"strconv"
)

type opKind uint8

const (
	opGet opKind = iota
	opSet
)

// op is one request: what to send and when it was meant to be sent.
type op struct {
	kind     opKind
	size     int32  // value size of a set
	key      uint64 // key index
	intended int64  // ns since the run's epoch
}

// opGen draws requests. Not safe for concurrent use: each sender owns one.
type opGen struct {
	m        *workloadModel
	getRatio float64
	r        *rand.Rand
}

func (g *opGen) next(intended int64) op {
	o := op{intended: intended}
	if g.getRatio < 1 && g.r.Float64() >= g.getRatio {
		o.kind = opSet
		o.size = int32(g.m.sizes.Next(g.r))
	}
	rank := g.m.keys.Next(g.r)
	if g.m.scramble != nil {
		rank = g.m.scramble.Map(rank)
	}
	o.key = rank
	return o
}

// value is the shared read-only source of value bytes: every set sends a prefix of it.
type valueSource []byte

func newValueSource(n int) valueSource {
	v := make([]byte, n)
	for i := range v {
		v[i] = 'a' + byte(i%26)
	}
	return v
}

// appendRequest appends the text-protocol request for o.
func appendRequest(dst []byte, o *op, ks interface{ Append([]byte, uint64) []byte }, val valueSource) []byte {
	if o.kind == opGet {
		dst = append(dst, "get "...)
		dst = ks.Append(dst, o.key)
		return append(dst, "\r\n"...)
	}
	dst = append(dst, "set "...)
	dst = ks.Append(dst, o.key)
	dst = append(dst, " 0 0 "...)
	dst = strconv.AppendInt(dst, int64(o.size), 10)
	dst = append(dst, "\r\n"...)
	dst = append(dst, val[:o.size]...)
	return append(dst, "\r\n"...)
}
