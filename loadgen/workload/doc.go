// Package workload generates what the load generator sends: key ranks with uniform or Zipf skew,
// an optional scrambling of ranks into key indices, the keys' bytes, value sizes (fixed, weighted
// or Facebook's ETC model) and Poisson arrival gaps.
//
// Generators hold no random state of their own: every Next takes the caller's *rand.Rand, so each
// worker owns one source and nothing is shared between goroutines. Constructed generators are
// read-only and safe for concurrent use with distinct sources.
package workload
