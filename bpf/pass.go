package bpf

import (
	"fmt"

	"github.com/cilium/ebpf/link"
)

// AttachPass puts the XDP_PASS program on iface, in the calling thread's network namespace. A
// veth answers with XDP_TX in native mode only when its peer has an XDP program too: this is the
// one to put on the client's end. Closing the returned link detaches it.
func AttachPass(iface string, mode Mode) (link.Link, error) {
	prog, err := LoadPass()
	if err != nil {
		return nil, err
	}
	defer prog.Close() // the link holds the program
	l, _, err := AttachProgram(prog, iface, mode)
	if err != nil {
		return nil, fmt.Errorf("attach XDP_PASS: %w", err)
	}
	return l, nil
}
