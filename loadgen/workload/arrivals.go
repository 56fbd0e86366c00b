package workload

import (
	"errors"
	"math/rand/v2"
)

// ErrRate means an arrival rate that is not a positive finite number.
var ErrRate = errors.New("workload: arrival rate must be positive")

// Poisson generates the gaps of a Poisson process: independent exponential inter-arrival times.
// Splitting a total rate over k workers that each run a Poisson process at rate/k gives a Poisson
// process at the total rate.
type Poisson struct {
	meanNs float64
}

// NewPoisson returns a Poisson process of rate events per second.
func NewPoisson(rate float64) (*Poisson, error) {
	if !(rate > 0) || rate > 1e12 {
		return nil, ErrRate
	}
	return &Poisson{meanNs: 1e9 / rate}, nil
}

// NextGapNs draws the next gap in nanoseconds, as a float so that schedules accumulate without
// rounding drift.
func (p *Poisson) NextGapNs(r *rand.Rand) float64 { return r.ExpFloat64() * p.meanNs }

// MeanGapNs is the mean gap in nanoseconds.
func (p *Poisson) MeanGapNs() float64 { return p.meanNs }
