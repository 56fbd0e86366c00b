package protocol

import "bytes"

// CutLine splits b after its first "\r\n": line is what precedes it, rest what follows. ok is
// false when b holds no complete line yet.
func CutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 {
		return nil, b, false
	}
	return b[:i], b[i+2:], true
}

// ValueHeader is one item's header line in a retrieval reply, as AppendValue writes it.
type ValueHeader struct {
	Key    []byte // aliases the parsed line
	Flags  uint32
	Size   int    // data bytes that follow the line, before their "\r\n"
	CAS    uint64 // the CAS unique, when HasCAS
	HasCAS bool
}

// ParseValueLine parses "VALUE <key> <flags> <bytes>[ <cas unique>]" (without its line end), the
// line AppendValue writes before each item's data. It reports false for anything else: another
// reply, a missing or extra field, a bad number, a key memcached would not accept, or a size over
// MaxDataLen. It does not allocate.
func ParseValueLine(line []byte) (ValueHeader, bool) {
	var t Tokens
	t.Tokenize(line)
	if t.N < 4 || t.N > 5 || t.Rest != nil || string(t.Tok(0)) != "VALUE" || !KeyOK(t.Tok(1)) {
		return ValueHeader{}, false
	}
	h := ValueHeader{Key: t.Tok(1)}
	var ok bool
	if h.Flags, ok = ParseUint32(t.Tok(2)); !ok {
		return ValueHeader{}, false
	}
	size, ok := ParseUint64(t.Tok(3))
	if !ok || size > MaxDataLen {
		return ValueHeader{}, false
	}
	h.Size = int(size)
	if t.N == 5 {
		if h.CAS, ok = ParseUint64(t.Tok(4)); !ok {
			return ValueHeader{}, false
		}
		h.HasCAS = true
	}
	return h, true
}
