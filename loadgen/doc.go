// Package loadgen is xdpcache's load generator: it sends memcached requests on an open-loop
// Poisson schedule (or closed loop at a fixed concurrency), measures each request's latency from
// the time it was meant to be sent, and splits the results by who answered: the XDP program
// (kernel_hit, recognised by the DSCP mark on the reply), the server (user_hit, user_miss), or a
// set.
//
// Coordinated omission: in open loop a request's latency runs from its intended send time, so a
// stalled server or a stalled generator shows up as latency instead of silently thinning the
// schedule. The generator measures its own lag (intended against actual send time) and the
// requests it could not send, and reports a warning when it, not the server, is the bottleneck.
//
// Network namespaces: Run opens every socket it will use (the load phase's TCP connections, the
// measurement sockets and the metrics listener) from the calling goroutine before it starts any
// other goroutine. A caller that runs Run from a goroutine locked into a network namespace
// therefore gets all sockets inside that namespace. Config.Dial overrides how sockets are opened.
//
// Typical use:
//
//	rep, err := loadgen.Run(ctx, cfg, os.Stderr)
//	if err != nil { ... }
//	rep.WriteTable(os.Stdout)
package loadgen
