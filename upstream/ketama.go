package upstream

import (
	"crypto/md5"
	"encoding/binary"
	"net"
	"slices"
	"strconv"
)

// PointsPerServer is how many points each server puts on the ring (libketama's 160 for equal
// weights: 40 MD5 digests of 4 points each).
const PointsPerServer = 160

// point is one position on the ring and the server (index into Ring.addrs) it belongs to.
type point struct {
	hash   uint32
	server int
}

// Ring is a ketama continuum over a fixed list of servers. It is immutable and safe for
// concurrent use.
type Ring struct {
	addrs  []string
	points []point
}

// NewRing builds the continuum for addrs ("host:port", each weighted equally).
func NewRing(addrs []string) *Ring {
	r := &Ring{addrs: slices.Clone(addrs), points: make([]point, 0, len(addrs)*PointsPerServer)}
	var buf []byte
	for i, a := range addrs {
		name := pointName(a)
		for k := 0; k < PointsPerServer/4; k++ {
			buf = strconv.AppendInt(append(append(buf[:0], name...), '-'), int64(k), 10)
			d := md5.Sum(buf)
			for h := 0; h < 4; h++ {
				r.points = append(r.points, point{binary.LittleEndian.Uint32(d[4*h:]), i})
			}
		}
	}
	// Equal points (rare) are ordered by server name, so the ring does not depend on list order.
	slices.SortFunc(r.points, func(a, b point) int {
		if a.hash != b.hash {
			if a.hash < b.hash {
				return -1
			}
			return 1
		}
		switch {
		case r.addrs[a.server] < r.addrs[b.server]:
			return -1
		case r.addrs[a.server] > r.addrs[b.server]:
			return 1
		}
		return 0
	})
	return r
}

// pointName is the server's name in the strings hashed for its points: "host:port", or "host"
// on memcached's default port 11211, as libmemcached writes it.
func pointName(addr string) string {
	if host, port, err := net.SplitHostPort(addr); err == nil && port == "11211" {
		return host
	}
	return addr
}

// HashKey is ketama's key hash: the first four bytes of MD5(key), little-endian.
func HashKey(key []byte) uint32 {
	d := md5.Sum(key)
	return binary.LittleEndian.Uint32(d[:4])
}

// Pick returns the index (into the list given to NewRing) of the server that owns key; -1 if
// the ring is empty.
func (r *Ring) Pick(key []byte) int {
	if len(r.points) == 0 {
		return -1
	}
	return r.owner(HashKey(key))
}

// owner returns the server of the first point at or after h, wrapping around.
func (r *Ring) owner(h uint32) int {
	i, _ := slices.BinarySearchFunc(r.points, h, func(p point, h uint32) int {
		switch {
		case p.hash < h:
			return -1
		case p.hash > h:
			return 1
		}
		return 0
	})
	if i == len(r.points) {
		i = 0
	}
	return r.points[i].server
}

// Addr returns server i's address.
func (r *Ring) Addr(i int) string { return r.addrs[i] }
