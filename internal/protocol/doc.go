// Package protocol is memcached's wire format: request parsing, reply encoding and the UDP frame
// header. It is the one encoder shared by the server, the kernel cache fill and the load generator,
// so the bytes the kernel sends are the server's bytes by construction.
//
// It imports nothing of the project's.
package protocol
