package checksum

import "testing"

// TestRFC1071Example checks the worked example of RFC 1071 section 3: the words 0001 f203 f4f5
// f6f7 fold to 0xddf2.
func TestRFC1071Example(t *testing.T) {
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Fold(Sum(b)); got != 0xddf2 {
		t.Fatalf("Fold(Sum(%x)) = %#04x, want 0xddf2", b, got)
	}
}

// TestPiecesAddUp: the sums of even-offset pieces add up to the sum of the whole, which is what
// lets the kernel cache store one sum per reply piece; an odd tail counts as a high byte.
func TestPiecesAddUp(t *testing.T) {
	b := []byte("VALUE key 0 5\r\nhello\r\nEND\r\n!")
	for cut := 0; cut <= len(b); cut += 2 {
		if got, want := Fold(Sum(b[:cut])+Sum(b[cut:])), Fold(Sum(b)); got != want {
			t.Fatalf("cut at %d: pieces fold to %#04x, whole to %#04x", cut, got, want)
		}
	}
	if got := Sum([]byte{0xab}); got != 0xab00 {
		t.Fatalf("Sum of one byte 0xab = %#x, want 0xab00", got)
	}
}

// TestVerifies: a buffer carrying its own checksum folds to 0xffff.
func TestVerifies(t *testing.T) {
	b := []byte{0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x00, 0x00, 0x40, 0x11, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}
	c := ^Fold(Sum(b))
	b[10], b[11] = byte(c>>8), byte(c)
	if got := Fold(Sum(b)); got != 0xffff {
		t.Fatalf("with its checksum %#04x the header folds to %#04x, want 0xffff", c, got)
	}
}
