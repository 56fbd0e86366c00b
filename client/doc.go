// Package client is a memcached client for Go services with the API of gomemcache
// (github.com/bradfitz/gomemcache/memcache) that sends gets over UDP, where a server with a
// kernel path such as xdpcache answers hot keys without waking a process, and everything else
// over TCP through gomemcache itself.
//
// Changing the import line of a program written for gomemcache is enough: New, NewFromSelector,
// the Client fields, Item, ServerSelector, ServerList and the errors are gomemcache's own, and
// keys go to the same servers (gomemcache's ServerList places them).
//
// Get and GetMulti send one `gets` request per key in a datagram with memcached's 8-byte frame
// header (request id, sequence number, datagram count, reserved), to the server's TCP host and
// port (or UDPPort). Each server has its own connected UDP socket and a goroutine reading it;
// the requests of a GetMulti to one server leave in one sendmmsg, as do the gets of goroutines
// that run at the same time (the first to send yields once to let the others queue theirs), and
// replies spread over several datagrams are put back together in any order. Items carry their CAS id, as gomemcache's do,
// so CompareAndSwap works with an item read over UDP.
//
// A request goes over TCP instead, with gomemcache, when its UDP attempts time out (UDPTimeout,
// then UDPRetries more attempts, each under a new request id), when the server answers
// SERVER_ERROR over UDP (as it does for a reply it will not send over UDP), when the reply is
// not a well-formed answer to it, and while the server's UDP port is down (unreachable, or
// silent for several requests in a row). Stats counts each reason; NewCollector exports the
// counters to Prometheus. DisableUDP sends every get over TCP.
//
// Replies the server's kernel path sends carry a DSCP mark (xdpcache serve
// --mark-kernel-replies); with KernelDSCP set to the same value, Stats.KernelReplies counts them.
package client
