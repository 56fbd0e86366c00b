package protocol

import (
	"bytes"
	"testing"
)

func TestFrameHeaderRoundTrip(t *testing.T) {
	h := FrameHeader{RequestID: 0xBEEF, Seq: 2, Total: 3}
	b := h.AppendTo(nil)
	if want := []byte{0xBE, 0xEF, 0, 2, 0, 3, 0, 0}; !bytes.Equal(b, want) {
		t.Fatalf("wire bytes %x, want %x", b, want)
	}
	got, err := ParseFrameHeader(b)
	if err != nil || got != h {
		t.Fatalf("ParseFrameHeader = %+v, %v; want %+v", got, err, h)
	}
	if _, err := ParseFrameHeader(b[:7]); err != ErrShortFrame {
		t.Fatalf("short header: err %v, want ErrShortFrame", err)
	}
}

func TestSplitReply(t *testing.T) {
	reply := bytes.Repeat([]byte("x"), 3000)
	parts := SplitReply(7, reply, MaxDatagram)
	if len(parts) != 3 {
		t.Fatalf("%d datagrams, want 3", len(parts))
	}
	var joined []byte
	for i, p := range parts {
		if len(p) > MaxDatagram {
			t.Errorf("datagram %d is %d bytes, over %d", i, len(p), MaxDatagram)
		}
		h, _ := ParseFrameHeader(p)
		if h.RequestID != 7 || h.Seq != uint16(i) || h.Total != 3 {
			t.Errorf("datagram %d header %+v", i, h)
		}
		joined = append(joined, p[FrameHeaderLen:]...)
	}
	if !bytes.Equal(joined, reply) {
		t.Fatal("payloads do not reassemble to the reply")
	}
	if SplitReply(1, nil, MaxDatagram) != nil {
		t.Fatal("empty reply should give no datagrams")
	}
}

func TestAppendValue(t *testing.T) {
	got := string(AppendValue(nil, "k", 5, []byte("hello"), 42, false))
	if want := "VALUE k 5 5\r\nhello\r\n"; got != want {
		t.Fatalf("get form %q, want %q", got, want)
	}
	got = string(AppendValue(nil, "k", 0, nil, 42, true))
	if want := "VALUE k 0 0 42\r\n\r\n"; got != want {
		t.Fatalf("gets form %q, want %q", got, want)
	}
}
