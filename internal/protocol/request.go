package protocol

import (
	"bytes"
	"errors"
	"math"
	"math/big"
)

// Request-side limits and replies shared by the server and the load generator.
const (
	// MaxKeyLen is memcached's KEY_MAX_LENGTH.
	MaxKeyLen = 250
	// MaxTokens is memcached's MAX_TOKENS: a line is split into at most MaxTokens-1 tokens and
	// whatever follows is left for the command to split further (multi-key gets do).
	MaxTokens = 24
	// MaxLineLen is how much memcached buffers without a newline before it closes the connection,
	// unless the line is a get or gets, which may be longer.
	MaxLineLen = 2048
	// MaxDataLen is the largest data block length a storage line may announce (INT_MAX - 2).
	MaxDataLen = math.MaxInt32 - 2
)

// ErrBadKey is returned for keys memcached rejects: empty or longer than MaxKeyLen.
var ErrBadKey = errors.New("protocol: bad key")

// Tokens is a request line split the way memcached's tokenize_command splits it: on single spaces,
// runs of spaces collapsed, no other separator. It keeps slices into the line, so it is valid only
// while the line is. The zero value is ready to use; reuse one per connection to avoid allocation.
type Tokens struct {
	tok [MaxTokens][]byte
	// N is the number of tokens found (at most MaxTokens-1). memcached's ntokens is N+1: it counts
	// a terminal token as well.
	N int
	// Rest is the unsplit remainder when the line had more than MaxTokens-1 tokens, else nil.
	Rest []byte
}

// Tok returns token i, or nil past the end.
func (t *Tokens) Tok(i int) []byte {
	if i < 0 || i >= t.N {
		return nil
	}
	return t.tok[i]
}

// Tokenize splits line (without its line end) into t.
func (t *Tokens) Tokenize(line []byte) {
	t.N, t.Rest = 0, nil
	i := 0
	for i < len(line) {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		if i == len(line) {
			return
		}
		if t.N == MaxTokens-1 {
			t.Rest = line[i:]
			return
		}
		j := i
		for j < len(line) && line[j] != ' ' {
			j++
		}
		t.tok[t.N] = line[i:j]
		t.N++
		i = j
	}
}

// NoReply reports whether the last token is "noreply", as memcached's set_noreply_maybe does.
func (t *Tokens) NoReply() bool {
	return t.N > 0 && string(t.tok[t.N-1]) == "noreply"
}

// TrimLine returns line without its "\n" or "\r\n" ending, as memcached strips it: a "\r" is
// removed only directly before the "\n".
func TrimLine(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	}
	return line
}

// LongLineAllowed reports whether a line still without a newline after MaxLineLen bytes may keep
// growing: only a get or gets (a multi-key get of any length), after at most 100 leading spaces.
func LongLineAllowed(buf []byte) bool {
	i := 0
	for i < len(buf) && i <= 100 && buf[i] == ' ' {
		i++
	}
	if i > 100 {
		return false
	}
	rest := buf[i:]
	return bytes.HasPrefix(rest, []byte("get ")) || bytes.HasPrefix(rest, []byte("gets "))
}

// KeyOK reports whether memcached's text protocol accepts key: 1 to MaxKeyLen bytes. Spaces
// cannot occur (they separate tokens); memcached's text protocol accepts any other byte.
func KeyOK(key []byte) bool { return len(key) > 0 && len(key) <= MaxKeyLen }

// isSpace is C's isspace in the "C" locale.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// strtou parses like C's strtoull(s, &end, 10): leading white space, an optional sign, decimal
// digits. It returns the value (negated modulo 2^64 after '-'), the index just past the digits,
// whether any digit was read, and whether the magnitude overflowed (ERANGE).
func strtou(s []byte) (v uint64, end int, ok, overflow bool) {
	i, neg := skipSpaceSign(s)
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		d := uint64(s[i] - '0')
		if v > (math.MaxUint64-d)/10 {
			overflow = true
		}
		v = v*10 + d
		i++
	}
	if i == start {
		return 0, 0, false, false
	}
	if neg {
		v = -v
	}
	return v, i, true, overflow
}

// skipSpaceSign skips what C's strto* functions skip before the digits, leading white space and
// one sign, and returns where the digits start and whether the sign was '-'.
func skipSpaceSign(s []byte) (int, bool) {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	return i, neg
}

// endOK is memcached's check after strto*: the number ends the token or is followed by white space.
func endOK(s []byte, end int) bool { return end == len(s) || isSpace(s[end]) }

// ParseUint64 is memcached's safe_strtoull: a decimal unsigned 64-bit number. Values that look
// negative as signed 64-bit numbers are rejected when a '-' was written.
func ParseUint64(s []byte) (uint64, bool) {
	v, end, ok, overflow := strtou(s)
	if !ok || overflow || !endOK(s, end) {
		return 0, false
	}
	if int64(v) < 0 && bytes.IndexByte(s[:end], '-') >= 0 {
		return 0, false
	}
	return v, true
}

// ParseUint32 is memcached's safe_strtoul on a 64-bit system: parsed as unsigned long, then
// truncated to 32 bits (so "4294967296" reads as 0, as memcached stores it).
func ParseUint32(s []byte) (uint32, bool) {
	v, end, ok, overflow := strtou(s)
	if !ok || overflow || !endOK(s, end) {
		return 0, false
	}
	if int64(v) < 0 && bytes.IndexByte(s, '-') >= 0 {
		return 0, false
	}
	return uint32(v), true
}

// ParseInt32 is memcached's safe_strtol on a 64-bit system: parsed as a signed long, then
// truncated to 32 bits (memcached stores it in an int32_t).
func ParseInt32(s []byte) (int32, bool) {
	v, end, ok, _ := strtou(s)
	if !ok || !endOK(s, end) {
		return 0, false
	}
	// Recompute the range check strtol does on the magnitude.
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	neg := i < len(s) && s[i] == '-'
	var mag uint64
	for j := i; j < end; j++ {
		if s[j] < '0' || s[j] > '9' {
			continue
		}
		d := uint64(s[j] - '0')
		if mag > (math.MaxUint64-d)/10 {
			return 0, false
		}
		mag = mag*10 + d
	}
	if (!neg && mag > math.MaxInt64) || (neg && mag > 1<<63) {
		return 0, false
	}
	return int32(int64(v)), true
}

// ParseDouble is memcached's safe_strtod: the longest prefix C's strtod reads (decimal or
// hexadecimal with optional exponent, inf, infinity, nan, nan(chars)), which must end the token
// or be followed by white space; refused on ERANGE, which glibc sets when the result overflows or
// is an inexact zero or subnormal.
func ParseDouble(s []byte) (float64, bool) {
	i, neg := skipSpaceSign(s)
	if n := floatWord(s[i:]); n > 0 {
		if !endOK(s, i+n) {
			return 0, false
		}
		v := math.Inf(1)
		if s[i] == 'n' || s[i] == 'N' {
			v = math.NaN()
		}
		if neg {
			v = -v
		}
		return v, true
	}
	start := i
	hex := i+1 < len(s) && s[i] == '0' && (s[i+1] == 'x' || s[i+1] == 'X') && mantissaLen(s[i+2:], true) > 0
	digits, expChar := mantissaLen(s[i:], false), byte('e')
	if hex {
		digits, expChar = 2+mantissaLen(s[i+2:], true), 'p'
	}
	if digits == 0 {
		return 0, false
	}
	i += digits
	if i < len(s) && (s[i]|0x20) == expChar {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		k := j
		for k < len(s) && s[k] >= '0' && s[k] <= '9' {
			k++
		}
		if k > j {
			i = k
		}
	}
	if !endOK(s, i) {
		return 0, false
	}
	num := string(s[start:i])
	if hex && bytes.IndexAny(s[start:i], "pP") < 0 {
		num += "p0"
	}
	f, _, err := big.ParseFloat(num, 0, 4096, big.ToNearestEven)
	if err != nil {
		return 0, false
	}
	v, acc := f.Float64()
	if math.IsInf(v, 0) || (acc != big.Exact && math.Abs(v) < 0x1p-1022) {
		return 0, false
	}
	if neg {
		v = -v
	}
	return v, true
}

// floatWord is the length of the inf, infinity, nan or nan(chars) that b starts with, else 0.
func floatWord(b []byte) int {
	lower := func(n int) string { return string(bytes.ToLower(b[:min(n, len(b))])) }
	switch {
	case lower(8) == "infinity":
		return 8
	case lower(3) == "inf":
		return 3
	case lower(3) != "nan":
		return 0
	}
	if len(b) > 3 && b[3] == '(' {
		for j := 4; j < len(b); j++ {
			c := b[j] | 0x20
			switch {
			case b[j] == ')':
				return j + 1
			case (c >= 'a' && c <= 'z') || (b[j] >= '0' && b[j] <= '9') || b[j] == '_':
			default:
				return 3
			}
		}
	}
	return 3
}

// mantissaLen is the length of the digits with at most one point that b starts with, 0 if it
// has no digit.
func mantissaLen(b []byte, hex bool) int {
	n, digits, point := 0, 0, false
	for ; n < len(b); n++ {
		c := b[n]
		switch {
		case c >= '0' && c <= '9', hex && (c|0x20) >= 'a' && (c|0x20) <= 'f':
			digits++
		case c == '.' && !point:
			point = true
		default:
			if digits == 0 {
				return 0
			}
			return n
		}
	}
	if digits == 0 {
		return 0
	}
	return n
}
