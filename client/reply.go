package client

import "bytes"

// legalKey is gomemcache's rule for keys, so that a key it refuses is refused here too, before
// any packet is sent: at most 250 bytes, no spaces or control characters.
func legalKey(key string) bool {
	if len(key) > 250 {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] == 0x7f {
			return false
		}
	}
	return true
}

// getsRequest is the request for one key. Requests carry one key each: memcached answers a
// multi-key get over UDP with one message per item found, all under the same request id and each
// numbered from 0, so datagrams of different messages cannot be told apart once one is lost or
// late. A one-key request has a one-message reply, whole or not at all, and a legal key always
// fits one datagram.
func getsRequest(key string) []byte {
	b := make([]byte, 0, len("gets \r\n")+len(key))
	return append(append(append(b, "gets "...), key...), "\r\n"...)
}

var (
	endLine         = []byte("END\r\n")
	valuePrefix     = []byte("VALUE ")
	serverErrPrefix = []byte("SERVER_ERROR")
)

// parseReply reads a whole reply to `gets key`: END, or one VALUE block for key then END, and
// nothing after. The item's value is a slice of reply, capped so that appending to it copies. A
// SERVER_ERROR reply gives ReasonServerError; anything else that is not such a reply gives
// ReasonBadReply.
func parseReply(reply []byte, key string) (*Item, Reason) {
	if bytes.Equal(reply, endLine) {
		return nil, ReasonNone
	}
	nl := bytes.Index(reply, []byte("\r\n"))
	switch {
	case nl < 0:
		return nil, ReasonBadReply
	case bytes.HasPrefix(reply, serverErrPrefix):
		return nil, ReasonServerError
	case !bytes.HasPrefix(reply, valuePrefix):
		return nil, ReasonBadReply
	}
	it, size, ok := parseValueLine(reply[len(valuePrefix):nl])
	if !ok || it.Key != key {
		return nil, ReasonBadReply
	}
	data := reply[nl+2:]
	if len(data) != size+2+len(endLine) || data[size] != '\r' || data[size+1] != '\n' ||
		!bytes.Equal(data[size+2:], endLine) {
		return nil, ReasonBadReply
	}
	it.Value = data[:size:size]
	return it, ReasonNone
}

// parseValueLine reads "key flags bytes [cas]" of a VALUE line, fields one space apart.
func parseValueLine(line []byte) (it *Item, size int, ok bool) {
	var f [4][]byte
	n := 0
	for n < len(f) {
		i := bytes.IndexByte(line, ' ')
		if i < 0 {
			f[n], n, line = line, n+1, nil
			break
		}
		f[n], n, line = line[:i], n+1, line[i+1:]
	}
	if line != nil || n < 3 || len(f[0]) == 0 {
		return nil, 0, false
	}
	flags, ok1 := parseUint(f[1], 1<<32-1)
	sz, ok2 := parseUint(f[2], 1<<31-1)
	cas, ok3 := uint64(0), true
	if n == 4 {
		cas, ok3 = parseUint(f[3], 1<<64-1)
	}
	if !ok1 || !ok2 || !ok3 {
		return nil, 0, false
	}
	return &Item{Key: string(f[0]), Flags: uint32(flags), CasID: cas}, int(sz), true
}

// parseUint reads a decimal number of at most limit.
func parseUint(b []byte, limit uint64) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (limit-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}
