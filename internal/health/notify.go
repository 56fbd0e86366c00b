package health

import (
	"fmt"
	"net"
	"os"
)

// Notify sends state (for instance "READY=1" or "MAINPID=1234") to the service manager, as
// sd_notify(3) does, when $NOTIFY_SOCKET names one; it reports whether it sent anything.
func Notify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("notify service manager: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("notify service manager: %w", err)
	}
	return true, nil
}
