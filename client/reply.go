package client

import (
	"bytes"
	"strconv"
)

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

// parseValueLine reads "key flags bytes [cas]" of a VALUE line.
func parseValueLine(line []byte) (it *Item, size int, ok bool) {
	f := bytes.Fields(line)
	if len(f) != 3 && len(f) != 4 {
		return nil, 0, false
	}
	flags, err := strconv.ParseUint(string(f[1]), 10, 32)
	if err != nil {
		return nil, 0, false
	}
	n, err := strconv.ParseUint(string(f[2]), 10, 31)
	if err != nil {
		return nil, 0, false
	}
	it = &Item{Key: string(f[0]), Flags: uint32(flags)}
	if len(f) == 4 {
		if it.CasID, err = strconv.ParseUint(string(f[3]), 10, 64); err != nil {
			return nil, 0, false
		}
	}
	return it, int(n), true
}
