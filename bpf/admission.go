package bpf

import (
	"fmt"
	"math/bits"
)

// Admission policies for Options.Admission.
const (
	AdmitAlways    = "always"
	AdmitFrequency = "frequency"
)

// admitThreshold is how many offers in one sketch window a key needs before it is admitted.
const admitThreshold = 2

// admission decides whether an offered key that is not in the kernel cache goes in. Not safe for
// concurrent use: the Cache calls it under its mutex.
type admission interface {
	admit(hash uint64) bool
	// prefer reports whether a new key should displace the eviction victim in a full cache.
	prefer(candidate, victim uint64) bool
}

type admitAll struct{}

func (admitAll) admit(uint64) bool { return true }

func (admitAll) prefer(uint64, uint64) bool { return true }

// frequencySketch is a count-min sketch with aging (TinyLFU's doorkeeper idea without the
// doorkeeper): every offer increments a key's four counters, a key is admitted once its estimate
// reaches admitThreshold, and every window offers all counters halve, so only keys requested
// again recently get in and a scan of one-off keys never displaces the hot set.
type frequencySketch struct {
	rows      [4][]uint8
	mask      uint64
	window    int
	offers    int
	threshold uint8
}

func newFrequencySketch(entries int) *frequencySketch {
	width := 1 << bits.Len(uint(max(entries*8, 4096)-1))
	width = min(width, 1<<22)
	s := &frequencySketch{mask: uint64(width - 1), window: max(10*entries, 1024), threshold: admitThreshold}
	for i := range s.rows {
		s.rows[i] = make([]uint8, width)
	}
	return s
}

// counter is hash's counter in row i (double hashing over the key's 64-bit hash).
func (s *frequencySketch) counter(i int, hash uint64) *uint8 {
	h2 := bits.RotateLeft64(hash, 32) | 1
	return &s.rows[i][(hash+uint64(i)*h2)&s.mask]
}

func (s *frequencySketch) admit(hash uint64) bool {
	est := uint8(255)
	for i := range s.rows {
		n := s.counter(i, hash)
		if *n < 255 {
			*n++
		}
		est = min(est, *n)
	}
	if s.offers++; s.offers >= s.window {
		s.offers = 0
		for i := range s.rows {
			for j := range s.rows[i] {
				s.rows[i][j] >>= 1
			}
		}
	}
	return est >= s.threshold
}

// estimate is a key's count in the sketch, without counting an offer.
func (s *frequencySketch) estimate(hash uint64) uint8 {
	est := uint8(255)
	for i := range s.rows {
		est = min(est, *s.counter(i, hash))
	}
	return est
}

// prefer is TinyLFU's comparison: a new key displaces the victim only if it was asked for more
// often recently. Without it, a key just past the admission threshold evicts whatever the CLOCK
// hand reaches, however hot.
func (s *frequencySketch) prefer(candidate, victim uint64) bool {
	return s.estimate(candidate) > s.estimate(victim)
}

func newAdmission(name string, entries int) (admission, error) {
	switch name {
	case AdmitAlways:
		return admitAll{}, nil
	case AdmitFrequency, "":
		return newFrequencySketch(entries), nil
	}
	return nil, fmt.Errorf("bpf: unknown admission policy %q (want %q or %q)", name, AdmitAlways, AdmitFrequency)
}
