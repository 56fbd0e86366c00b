package client

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// The types, errors and defaults are gomemcache's own, so that code written for gomemcache keeps
// compiling and comparing errors after its import line changes.
type (
	Item                = memcache.Item
	ServerSelector      = memcache.ServerSelector
	ServerList          = memcache.ServerList
	ConnectTimeoutError = memcache.ConnectTimeoutError
)

var (
	ErrCacheMiss    = memcache.ErrCacheMiss
	ErrCASConflict  = memcache.ErrCASConflict
	ErrNotStored    = memcache.ErrNotStored
	ErrServerError  = memcache.ErrServerError
	ErrNoStats      = memcache.ErrNoStats
	ErrMalformedKey = memcache.ErrMalformedKey
	ErrNoServers    = memcache.ErrNoServers
)

const (
	DefaultTimeout      = memcache.DefaultTimeout
	DefaultMaxIdleConns = memcache.DefaultMaxIdleConns

	// DefaultUDPTimeout is how long a UDP get attempt waits for its whole reply.
	DefaultUDPTimeout = 100 * time.Millisecond
	// DefaultUDPRetries is how many times a UDP get is sent again after a timeout before the
	// request goes over TCP.
	DefaultUDPRetries = 1
)

// Client is gomemcache's client with Get and GetMulti sent over UDP, memcached's frame header in
// front of each datagram, and everything else, fallbacks included, sent over TCP by the embedded
// gomemcache client. It is safe for use by multiple goroutines. Set the fields before the first
// request and leave them alone after it; gomemcache's fields (Timeout, MaxIdleConns,
// DialContext) apply to TCP as they do there.
type Client struct {
	*memcache.Client

	// UDPTimeout is how long one UDP attempt waits for its whole reply; 0 means
	// DefaultUDPTimeout.
	UDPTimeout time.Duration
	// UDPRetries is how many times an attempt that timed out is sent again, each time with a new
	// request id, before the request goes over TCP; 0 means DefaultUDPRetries, negative none.
	UDPRetries int
	// DisableUDP sends every get over TCP, as gomemcache does.
	DisableUDP bool
	// UDPPort is the servers' UDP port when it is not their TCP port; 0 means the same port.
	UDPPort int
	// KernelDSCP is the DSCP mark the server's kernel path sets on its replies (xdpcache serve
	// --mark-kernel-replies); replies carrying it are counted in Stats.KernelReplies. 0 means
	// the client does not look.
	KernelDSCP int
	// DialUDP opens the UDP socket of a server, "udp4" or "udp6" to "host:port"; nil means a
	// connected socket from net.Dialer. The connection must be a *net.UDPConn.
	DialUDP func(ctx context.Context, network, address string) (*net.UDPConn, error)

	selector ServerSelector
	ctr      counters

	mu      sync.RWMutex
	servers map[string]*udpServer // by the server's TCP address

	// maxReplyDatagrams bounds a reply's datagrams (total in the frame header); over it, the
	// request goes over TCP.
	maxReplyDatagrams int
}

// New returns a client of the servers, with equal weight, placing keys as gomemcache.New does.
func New(server ...string) *Client {
	ss := new(ServerList)
	_ = ss.SetServers(server...) // as gomemcache: an unresolvable list is empty, ErrNoServers
	return NewFromSelector(ss)
}

// NewFromSelector returns a client placing keys with ss, as gomemcache.NewFromSelector does.
func NewFromSelector(ss ServerSelector) *Client {
	return &Client{
		Client:            memcache.NewFromSelector(ss),
		selector:          ss,
		servers:           make(map[string]*udpServer),
		maxReplyDatagrams: 1024,
	}
}

// Get gets the item for key: over UDP with `gets`, so the item carries its CAS id as
// gomemcache's does, or over TCP when UDP fails or is off. ErrCacheMiss means no such item.
func (c *Client) Get(key string) (*Item, error) {
	if !legalKey(key) {
		return nil, ErrMalformedKey
	}
	if c.DisableUDP {
		c.ctr.tcpGets.Add(1)
		return c.Client.Get(key)
	}
	addr, err := c.selector.PickServer(key)
	if err != nil {
		return nil, err
	}
	reqs := []*request{{key: key, payload: getsRequest(key)}}
	c.udpRequests(addr, reqs)
	r := reqs[0]
	if r.reason != ReasonNone {
		c.fallback(r.reason)
		return c.Client.Get(key)
	}
	if r.item == nil {
		return nil, ErrCacheMiss
	}
	return r.item, nil
}

// GetMulti gets the items for keys; the map holds those found. Each key is one UDP request; the
// requests of each server go out in one sendmmsg, those of all servers before any reply is
// awaited. The keys whose UDP request fails are got over TCP, one request per server. The error is the last one a request met, as in gomemcache, and the map holds what
// the other requests found.
func (c *Client) GetMulti(keys []string) (map[string]*Item, error) {
	byAddr := make(map[string][]string)
	addrs := make(map[string]net.Addr)
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if !legalKey(k) {
			return nil, ErrMalformedKey
		}
		addr, err := c.selector.PickServer(k)
		if err != nil {
			return nil, err
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		a := addr.String()
		byAddr[a] = append(byAddr[a], k)
		addrs[a] = addr
	}
	m := make(map[string]*Item, len(seen))
	if c.DisableUDP {
		c.ctr.tcpGets.Add(uint64(len(byAddr)))
		return c.tcpMulti(m, byAddr)
	}
	type server struct {
		addr net.Addr
		reqs []*request
	}
	var servers []server
	for a, ks := range byAddr {
		s := server{addr: addrs[a]}
		for _, k := range ks {
			s.reqs = append(s.reqs, &request{key: k, payload: getsRequest(k)})
		}
		servers = append(servers, s)
	}
	udp := make([]*udpServer, len(servers))
	calls := make([][]*call, len(servers))
	for i, s := range servers {
		udp[i], calls[i] = c.sendUDP(s.addr, s.reqs)
	}
	failed := make(map[string][]string)
	for i, s := range servers {
		c.awaitUDP(udp[i], s.reqs, calls[i])
		for _, r := range s.reqs {
			if r.reason != ReasonNone {
				c.fallback(r.reason)
				failed[s.addr.String()] = append(failed[s.addr.String()], r.key)
				continue
			}
			if r.item != nil {
				m[r.key] = r.item
			}
		}
	}
	return c.tcpMulti(m, failed)
}

// tcpMulti gets the keys of each server over TCP with gomemcache, one request per server, all
// servers at once, and adds what they find to m.
func (c *Client) tcpMulti(m map[string]*Item, byAddr map[string][]string) (map[string]*Item, error) {
	if len(byAddr) == 0 {
		return m, nil
	}
	var all []string
	for _, ks := range byAddr {
		all = append(all, ks...)
	}
	got, err := c.Client.GetMulti(all)
	for k, it := range got {
		m[k] = it
	}
	return m, err
}

// fallback counts one request going over TCP for reason r.
func (c *Client) fallback(r Reason) {
	c.ctr.fallbacks[r].Add(1)
	c.ctr.tcpGets.Add(1)
}

// Close closes the UDP sockets, which ends their reader goroutines, and gomemcache's idle
// connections. A client that is dropped without Close keeps its sockets and readers. The client
// stays usable: the next request opens what it needs again.
func (c *Client) Close() error {
	c.mu.Lock()
	servers := c.servers
	c.servers = make(map[string]*udpServer)
	c.mu.Unlock()
	for _, s := range servers {
		s.close()
	}
	return c.Client.Close()
}

func (c *Client) udpTimeout() time.Duration {
	if c.UDPTimeout > 0 {
		return c.UDPTimeout
	}
	return DefaultUDPTimeout
}

func (c *Client) udpRetries() int {
	switch {
	case c.UDPRetries < 0:
		return 0
	case c.UDPRetries == 0:
		return DefaultUDPRetries
	}
	return c.UDPRetries
}
