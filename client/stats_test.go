package client

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollector(t *testing.T) {
	c := New("127.0.0.1:1")
	c.ctr.udpGets.Add(5)
	c.ctr.kernelReplies.Add(4)
	c.ctr.timeouts.Add(3)
	c.ctr.retries.Add(2)
	c.ctr.datagrams.Add(9)
	c.ctr.sends.Add(6)
	c.fallback(ReasonTimeout)
	c.fallback(ReasonDown)
	c.fallback(ReasonDown)
	want := `
# HELP xdpcache_client_fallbacks_total Get requests sent over TCP after trying or skipping UDP, by reason.
# TYPE xdpcache_client_fallbacks_total counter
xdpcache_client_fallbacks_total{reason="bad_reply"} 0
xdpcache_client_fallbacks_total{reason="down"} 2
xdpcache_client_fallbacks_total{reason="no_request_id"} 0
xdpcache_client_fallbacks_total{reason="no_udp"} 0
xdpcache_client_fallbacks_total{reason="server_error"} 0
xdpcache_client_fallbacks_total{reason="timeout"} 1
xdpcache_client_fallbacks_total{reason="too_large"} 0
xdpcache_client_fallbacks_total{reason="unreachable"} 0
# HELP xdpcache_client_kernel_replies_total UDP get replies that carried the kernel path's DSCP mark.
# TYPE xdpcache_client_kernel_replies_total counter
xdpcache_client_kernel_replies_total 4
# HELP xdpcache_client_tcp_gets_total Get requests sent over TCP (fallbacks, or UDP off).
# TYPE xdpcache_client_tcp_gets_total counter
xdpcache_client_tcp_gets_total 3
# HELP xdpcache_client_udp_datagrams_total UDP get datagrams sent, retries included.
# TYPE xdpcache_client_udp_datagrams_total counter
xdpcache_client_udp_datagrams_total 9
# HELP xdpcache_client_udp_gets_total Get requests answered over UDP.
# TYPE xdpcache_client_udp_gets_total counter
xdpcache_client_udp_gets_total 5
# HELP xdpcache_client_udp_retries_total UDP get attempts sent again after a timeout.
# TYPE xdpcache_client_udp_retries_total counter
xdpcache_client_udp_retries_total 2
# HELP xdpcache_client_udp_sends_total System calls that sent UDP get datagrams (several per call under load).
# TYPE xdpcache_client_udp_sends_total counter
xdpcache_client_udp_sends_total 6
# HELP xdpcache_client_udp_timeouts_total UDP get attempts that got no whole reply in time.
# TYPE xdpcache_client_udp_timeouts_total counter
xdpcache_client_udp_timeouts_total 3
`
	col := NewCollector(c)
	if err := testutil.CollectAndCompare(col, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(col); err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	if s := c.Stats(); s.Fallback(ReasonDown) != 2 || s.Fallback(numReasons) != 0 || Reason(99).String() != "unknown" {
		t.Fatalf("stats %+v", s)
	}
}

// TestUnixSocketServer checks that a server reached by a Unix socket, which has no UDP form,
// is asked over TCP.
func TestUnixSocketServer(t *testing.T) {
	c := New(t.TempDir() + "/memcached.sock")
	if _, err := c.Get("k"); err == nil {
		t.Fatal("get from a socket nobody listens on succeeded")
	}
	if s := c.Stats(); s.Fallback(ReasonNoUDP) != 1 {
		t.Fatalf("stats %+v, want one no_udp fallback", s)
	}
}
