//go:build race

package loadgen

// The race detector slows everything about tenfold: timing assertions do not hold under it.
const raceEnabled = true
