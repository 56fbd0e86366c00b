package netns

import (
	"fmt"
	"os"
)

// disableDAD turns off IPv6 duplicate address detection on ifname in the calling thread's namespace.
// /proc/sys/net belongs to the namespace of the process that opens it, so call it inside Do.
func disableDAD(ifname string) error {
	p := "/proc/sys/net/ipv6/conf/" + ifname + "/accept_dad"
	if err := os.WriteFile(p, []byte("0"), 0o644); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("disable DAD on %s: %w", ifname, err)
	}
	return nil
}
