package protocol

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"testing"
)

func TestTokenize(t *testing.T) {
	cases := []struct {
		line string
		want []string
		rest string
	}{
		{"", nil, ""},
		{"   ", nil, ""},
		{"get a", []string{"get", "a"}, ""},
		{"  get   a  b ", []string{"get", "a", "b"}, ""},
		{"get a\tb", []string{"get", "a\tb"}, ""},
		{strings.Repeat("k ", 30), strings.Split(strings.Repeat("k ", 23), " ")[:23], strings.Repeat("k ", 7)},
	}
	var tok Tokens
	for _, c := range cases {
		tok.Tokenize([]byte(c.line))
		var got []string
		for i := 0; i < tok.N; i++ {
			got = append(got, string(tok.Tok(i)))
		}
		if strings.Join(got, "|") != strings.Join(c.want, "|") || string(tok.Rest) != c.rest {
			t.Errorf("Tokenize(%q) = %q rest %q; want %q rest %q", c.line, got, tok.Rest, c.want, c.rest)
		}
	}
	if tok.Tok(-1) != nil || tok.Tok(99) != nil {
		t.Error("Tok out of range should be nil")
	}
	tok.Tokenize([]byte("set a 0 0 1 noreply"))
	if !tok.NoReply() {
		t.Error("NoReply false for a trailing noreply")
	}
	tok.Tokenize([]byte("set a 0 0 1 noreplyx"))
	if tok.NoReply() {
		t.Error("NoReply true for noreplyx")
	}
}

func TestTrimLine(t *testing.T) {
	for in, want := range map[string]string{"get a\r\n": "get a", "get a\n": "get a", "a\r\r\n": "a\r", "\r\n": "", "x": "x", "a\r": "a\r"} {
		if got := string(TrimLine([]byte(in))); got != want {
			t.Errorf("TrimLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLongLineAllowed(t *testing.T) {
	for in, want := range map[string]bool{"get a": true, "gets a": true, "  get a": true, "set a": false,
		"get": false, strings.Repeat(" ", 101) + "get a": false, strings.Repeat(" ", 100) + "get a": true} {
		if got := LongLineAllowed([]byte(in)); got != want {
			t.Errorf("LongLineAllowed(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestKeyOK(t *testing.T) {
	if !KeyOK([]byte(strings.Repeat("k", MaxKeyLen))) || KeyOK([]byte(strings.Repeat("k", MaxKeyLen+1))) || KeyOK(nil) {
		t.Fatal("KeyOK length bounds wrong")
	}
}

// The expected values are what memcached 1.6.18 on amd64 does with each token (probed: flags
// "4294967296" store as 0, exptime "4294967296" as 0, "-1" is rejected for flags).
func TestParseNumbers(t *testing.T) {
	u64 := []struct {
		in string
		v  uint64
		ok bool
	}{
		{"0", 0, true}, {"18446744073709551615", math.MaxUint64, true}, {"18446744073709551616", 0, false},
		{"+5", 5, true}, {"-1", 0, false}, {"-0", 0, true}, {" 7", 7, true}, {"7 ", 7, true},
		{"7\r", 7, true}, {"7x", 0, false}, {"", 0, false}, {"x", 0, false}, {"-", 0, false},
		{"-9223372036854775807", 0, false}, {"-5", 0, false},
	}
	for _, c := range u64 {
		if v, ok := ParseUint64([]byte(c.in)); v != c.v || ok != c.ok {
			t.Errorf("ParseUint64(%q) = %d, %v; want %d, %v", c.in, v, ok, c.v, c.ok)
		}
	}
	u32 := []struct {
		in string
		v  uint32
		ok bool
	}{
		{"4294967295", math.MaxUint32, true}, {"4294967296", 0, true}, {"-1", 0, false}, {"1x", 0, false},
	}
	for _, c := range u32 {
		if v, ok := ParseUint32([]byte(c.in)); v != c.v || ok != c.ok {
			t.Errorf("ParseUint32(%q) = %d, %v; want %d, %v", c.in, v, ok, c.v, c.ok)
		}
	}
	i32 := []struct {
		in string
		v  int32
		ok bool
	}{
		{"-1", -1, true}, {"2147483648", math.MinInt32, true}, {"4294967296", 0, true},
		{"9223372036854775807", -1, true}, {"9223372036854775808", 0, false},
		{"-9223372036854775808", 0, true}, {"-9223372036854775809", 0, false}, {"x", 0, false},
	}
	for _, c := range i32 {
		if v, ok := ParseInt32([]byte(c.in)); v != c.v || ok != c.ok {
			t.Errorf("ParseInt32(%q) = %d, %v; want %d, %v", c.in, v, ok, c.v, c.ok)
		}
	}
}

// Which tokens memcached 1.6.18's safe_strtod accepts (glibc strtod), probed with
// "slabs automove ratio <token>": OK means accepted, ERROR refused.
func TestParseDouble(t *testing.T) {
	cases := []struct {
		in string
		v  float64
		ok bool
	}{
		{"0.5", 0.5, true}, {".5", 0.5, true}, {"5.", 5, true}, {"-1", -1, true}, {"010", 10, true},
		{"0x1", 1, true}, {"0x.8p1", 1, true}, {"0x1P3", 8, true}, {"0x1p-1074", 0x1p-1074, true},
		{"0x1p-1022", 0x1p-1022, true}, {"0e-400", 0, true}, {"1e5 ", 1e5, true},
		{"infinity", math.Inf(1), true}, {"+inf", math.Inf(1), true}, {"-INF", math.Inf(-1), true},
		// Overflow, and inexact underflow to zero or a subnormal: ERANGE.
		{"1e400", 0, false}, {"1e-400", 0, false}, {"1e-310", 0, false},
		// Something other than white space after the number.
		{"0x", 0, false}, {".", 0, false}, {"-.5e", 0, false}, {"1e+", 0, false}, {"INFx", 0, false},
		{"nan(a-b)", 0, false}, {"1,5", 0, false}, {"1.5x", 0, false}, {"0b1", 0, false}, {"", 0, false},
	}
	for _, c := range cases {
		if v, ok := ParseDouble([]byte(c.in)); v != c.v || ok != c.ok {
			t.Errorf("ParseDouble(%q) = %v, %v; want %v, %v", c.in, v, ok, c.v, c.ok)
		}
	}
	for _, in := range []string{"nan", "NaN", "nan(abc)"} {
		if v, ok := ParseDouble([]byte(in)); !ok || !math.IsNaN(v) {
			t.Errorf("ParseDouble(%q) = %v, %v; want NaN, true", in, v, ok)
		}
	}
}

// FuzzTokenize checks the tokenizer's invariants and the number parsers against strconv.
func FuzzTokenize(f *testing.F) {
	for _, s := range []string{"get a b c", "set k 0 0 5 noreply", "  x  ", "", strings.Repeat("a ", 40), "incr k 18446744073709551615"} {
		f.Add([]byte(s))
	}
	var tok Tokens
	f.Fuzz(func(t *testing.T, line []byte) {
		tok.Tokenize(line)
		if tok.N > MaxTokens-1 || (tok.Rest != nil && tok.N != MaxTokens-1) {
			t.Fatalf("N=%d rest=%q", tok.N, tok.Rest)
		}
		var joined [][]byte
		for i := 0; i < tok.N; i++ {
			tk := tok.Tok(i)
			if len(tk) == 0 || bytes.IndexByte(tk, ' ') >= 0 {
				t.Fatalf("token %d = %q", i, tk)
			}
			joined = append(joined, tk)
		}
		if tok.Rest == nil {
			var want [][]byte
			for _, w := range bytes.Split(line, []byte{' '}) {
				if len(w) > 0 {
					want = append(want, w)
				}
			}
			if !bytes.Equal(bytes.Join(joined, []byte{' '}), bytes.Join(want, []byte{' '})) {
				t.Fatalf("tokens %q, want %q", joined, want)
			}
		}
		for _, tk := range joined {
			if v, ok := ParseUint64(tk); ok {
				if ref, err := strconv.ParseUint(strings.TrimLeft(strings.TrimSpace(string(tk)), "+"), 10, 64); err == nil && ref != v {
					t.Fatalf("ParseUint64(%q) = %d, strconv %d", tk, v, ref)
				}
			}
			if ref, err := strconv.ParseUint(string(tk), 10, 64); err == nil {
				if v, ok := ParseUint64(tk); !ok || v != ref {
					t.Fatalf("ParseUint64(%q) = %d, %v; strconv %d", tk, v, ok, ref)
				}
			}
			if ref, err := strconv.ParseInt(string(tk), 10, 64); err == nil {
				if v, ok := ParseInt32(tk); !ok || v != int32(ref) {
					t.Fatalf("ParseInt32(%q) = %d, %v; strconv %d", tk, v, ok, ref)
				}
			}
		}
	})
}
