package protocol

import (
	"bytes"
	"testing"
)

// TestParseValueLineRoundTrip: ParseValueLine reads back what AppendValue writes, with and
// without the CAS unique.
func TestParseValueLineRoundTrip(t *testing.T) {
	for _, c := range []struct {
		key     string
		flags   uint32
		data    string
		cas     uint64
		withCAS bool
	}{
		{"k", 0, "hello", 0, false},
		{"key:with:colons", 4294967295, "", 18446744073709551615, true},
		{string(bytes.Repeat([]byte("x"), MaxKeyLen)), 7, "v", 1, true},
	} {
		b := AppendValue(nil, c.key, c.flags, []byte(c.data), c.cas, c.withCAS)
		line, rest, ok := CutLine(b)
		if !ok {
			t.Fatalf("%q: no line", b)
		}
		h, ok := ParseValueLine(line)
		if !ok {
			t.Fatalf("%q: not parsed", line)
		}
		want := ValueHeader{Key: []byte(c.key), Flags: c.flags, Size: len(c.data), HasCAS: c.withCAS}
		if c.withCAS {
			want.CAS = c.cas
		}
		if string(h.Key) != string(want.Key) || h.Flags != want.Flags || h.Size != want.Size ||
			h.CAS != want.CAS || h.HasCAS != want.HasCAS {
			t.Errorf("%q: parsed %+v, want %+v", line, h, want)
		}
		if string(rest) != c.data+"\r\n" {
			t.Errorf("%q: rest %q, want the data and its line end", b, rest)
		}
	}
}

func TestParseValueLineRejects(t *testing.T) {
	for _, line := range []string{
		"", "END", "VALUE", "VALUE k", "VALUE k 0", "VALUE k x 5", "VALUE k 0 x", "VALUE k 0 5 x",
		"VALUE k 0 5 1 extra", "VALUES k 0 5", "value k 0 5", "VALUE k 0 -1", "VALUE k 0 2147483646",
		"VALUE k 4294967296 5 1 2", "VALUE " + string(bytes.Repeat([]byte("x"), MaxKeyLen+1)) + " 0 1",
	} {
		if h, ok := ParseValueLine([]byte(line)); ok {
			t.Errorf("%q parsed as %+v", line, h)
		}
	}
}

func TestCutLine(t *testing.T) {
	for _, c := range []struct{ in, line, rest string }{
		{"END\r\n", "END", ""},
		{"VALUE k 0 1\r\nv\r\nEND\r\n", "VALUE k 0 1", "v\r\nEND\r\n"},
		{"\r\n", "", ""},
	} {
		line, rest, ok := CutLine([]byte(c.in))
		if !ok || string(line) != c.line || string(rest) != c.rest {
			t.Errorf("CutLine(%q) = %q, %q, %v; want %q, %q", c.in, line, rest, ok, c.line, c.rest)
		}
	}
	for _, in := range []string{"", "END", "END\r", "END\n"} {
		if _, rest, ok := CutLine([]byte(in)); ok || string(rest) != in {
			t.Errorf("CutLine(%q) found a line (rest %q)", in, rest)
		}
	}
}

// TestParseValueLineAllocs: the load generator parses every reply with it.
func TestParseValueLineAllocs(t *testing.T) {
	line := []byte("VALUE some:key 0 1000 123456")
	if n := testing.AllocsPerRun(100, func() {
		if _, ok := ParseValueLine(line); !ok {
			t.Fatal("not parsed")
		}
	}); n != 0 {
		t.Fatalf("%v allocations per call, want 0", n)
	}
}
