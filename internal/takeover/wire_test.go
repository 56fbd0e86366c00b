package takeover

import (
	"bytes"
	"errors"
	"testing"
)

// closedAfterHeader takes one write, as a peer that acts on a frame's header alone and closes:
// any write after it fails, even of nothing.
type closedAfterHeader struct {
	got    bytes.Buffer
	writes int
}

func (w *closedAfterHeader) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > 1 {
		return 0, errors.New("broken pipe")
	}
	return w.got.Write(p)
}

// TestWriteFrameEmptyPayload: a frame without payload is its header and nothing more, so a peer
// that closes once it has the header cannot fail the write.
func TestWriteFrameEmptyPayload(t *testing.T) {
	var w closedAfterHeader
	if err := writeFrame(&w, kindEnd, nil); err != nil {
		t.Fatalf("writeFrame: %v", err)
	}
	kind, payload, err := readFrame(&w.got, 0)
	if err != nil || kind != kindEnd || len(payload) != 0 || w.writes != 1 {
		t.Fatalf("read back %q %q %v after %d writes", kind, payload, err, w.writes)
	}
}
