// Package upstream is xdpcache's client for the real memcached servers it fronts
// (`xdpcache serve --upstream host:port,...`): which server owns a key, a bounded connection
// pool per server with timeouts, and a health state that makes requests for a dead server fail
// fast instead of hanging.
//
// # Placement: ketama
//
// Keys are spread with ketama consistent hashing, as libketama defined it and libmemcached
// (MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, equal weights) computes it: each server contributes 160
// points to a ring of uint32 values. The points come from MD5 digests of "<name>-<i>" for
// i = 0..39, where name is "host:port", or just "host" on the default port 11211 (libmemcached's
// rule); each 16-byte digest gives four points, bytes 4h..4h+3 read little-endian. A key hashes
// to the first four bytes of MD5(key), little-endian, and belongs to the server of the first point
// at or after that value, wrapping to the ring's first point. Adding an (n+1)th server therefore
// moves about 1/(n+1) of the keys, all of them to the new server; removing one moves only its own
// keys. Tests check placements against libmemcached's own output (testdata/).
//
// # Failure
//
// A request that cannot connect within DialTimeout, or gets no complete reply within Timeout,
// marks its server down: the connection is closed, idle connections are dropped, and from then on
// requests for that server fail at once with ErrUnavailable. One background probe per down server
// dials and sends `version` at most every RetryInterval and marks it up again when it answers.
// Keys of a down server are not moved to another one: the other server would serve and cache
// values that the returning server's copies then contradict.
//
// A write whose reply did not arrive in time may or may not have been applied; the caller can
// only report the error.
//
// A Cluster and its Servers are safe for concurrent use. The package does not log; it counts
// requests by outcome and exports them, with each server's state, as Prometheus metrics.
package upstream
