package workload

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
)

// ErrValueSpec means a --value-size specification could not be parsed.
var ErrValueSpec = errors.New("workload: bad value size specification")

// SizeDist draws value sizes in bytes.
type SizeDist interface {
	Next(r *rand.Rand) int
	// Max is the largest size Next can return.
	Max() int
	// Mean is the expected size, for reports and capacity estimates.
	Mean() float64
	// String is the specification the distribution was parsed from.
	String() string
}

// ParseSizes parses a value size specification, clamping every size to [0, maxSize]:
//
//	"32"                fixed size
//	"32:0.5,1000:0.5"   weighted list of sizes (weights need not sum to 1)
//	"etc"               Facebook's ETC pool (Atikoglu et al., SIGMETRICS'12)
func ParseSizes(spec string, maxSize int) (SizeDist, error) {
	spec = strings.TrimSpace(spec)
	if maxSize < 1 {
		return nil, fmt.Errorf("%w: maximum size %d", ErrValueSpec, maxSize)
	}
	switch {
	case strings.EqualFold(spec, "etc"):
		return NewETC(maxSize), nil
	case strings.Contains(spec, ":") || strings.Contains(spec, ","):
		return parseWeighted(spec, maxSize)
	}
	n, err := strconv.Atoi(spec)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%w: %q", ErrValueSpec, spec)
	}
	if n > maxSize {
		return nil, fmt.Errorf("%w: %d bytes over the maximum %d", ErrValueSpec, n, maxSize)
	}
	return Fixed(n), nil
}

// Fixed always draws the same size.
type Fixed int

// Next returns the size.
func (f Fixed) Next(*rand.Rand) int { return int(f) }

// Max returns the size.
func (f Fixed) Max() int { return int(f) }

// Mean returns the size.
func (f Fixed) Mean() float64 { return float64(f) }

func (f Fixed) String() string { return strconv.Itoa(int(f)) }

// Weighted draws from a list of sizes with weights.
type Weighted struct {
	sizes []int
	cum   []float64 // cumulative weights, normalised to end at 1
	spec  string
}

func parseWeighted(spec string, maxSize int) (*Weighted, error) {
	w := &Weighted{spec: spec}
	var total float64
	for part := range strings.SplitSeq(spec, ",") {
		sz, wt, ok := strings.Cut(strings.TrimSpace(part), ":")
		n, err1 := strconv.Atoi(sz)
		f, err2 := strconv.ParseFloat(wt, 64)
		if !ok || err1 != nil || err2 != nil || n < 0 || !(f > 0) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%w: %q (want SIZE:WEIGHT,...)", ErrValueSpec, part)
		}
		if n > maxSize {
			return nil, fmt.Errorf("%w: %d bytes over the maximum %d", ErrValueSpec, n, maxSize)
		}
		total += f
		w.sizes = append(w.sizes, n)
		w.cum = append(w.cum, total)
	}
	for i := range w.cum {
		w.cum[i] /= total
	}
	w.cum[len(w.cum)-1] = 1
	return w, nil
}

// Next draws a size.
func (w *Weighted) Next(r *rand.Rand) int {
	u := r.Float64()
	return w.sizes[sort.SearchFloat64s(w.cum, u)]
}

// Max is the largest listed size.
func (w *Weighted) Max() int {
	m := 0
	for _, s := range w.sizes {
		m = max(m, s)
	}
	return m
}

// Mean is the weighted mean size.
func (w *Weighted) Mean() float64 {
	var m, prev float64
	for i, c := range w.cum {
		m += float64(w.sizes[i]) * (c - prev)
		prev = c
	}
	return m
}

func (w *Weighted) String() string { return w.spec }

// ETC parameters for value sizes: a generalized Pareto distribution with location 0, scale
// 214.476 and shape 0.348238, as fitted to Facebook's ETC pool in Atikoglu et al., "Workload
// Analysis of a Large-Scale Key-Value Store", SIGMETRICS'12, table 5.
const (
	ETCLocation = 0.0
	ETCScale    = 214.476
	ETCShape    = 0.348238
)

// ETC draws value sizes from the generalized Pareto fit of Facebook's ETC pool, rounded up to at
// least one byte and clamped to the maximum (the distribution's tail is unbounded).
type ETC struct{ max int }

// NewETC returns the ETC size model clamped to maxSize.
func NewETC(maxSize int) *ETC { return &ETC{max: maxSize} }

// Next draws a size by inverting the generalized Pareto CDF.
func (e *ETC) Next(r *rand.Rand) int {
	u := r.Float64()
	x := ETCLocation + ETCScale*(math.Pow(1-u, -ETCShape)-1)/ETCShape
	n := int(math.Ceil(x))
	if n < 1 {
		n = 1
	}
	if n > e.max || x > float64(e.max) {
		n = e.max
	}
	return n
}

// Max is the clamp.
func (e *ETC) Max() int { return e.max }

// Mean is the mean of the unclamped distribution, scale/(1-shape) (the clamp lowers it slightly).
func (e *ETC) Mean() float64 { return ETCLocation + ETCScale/(1-ETCShape) }

func (e *ETC) String() string { return "etc" }

// GParetoCDF is the generalized Pareto CDF with the given location, scale and shape (shape != 0).
func GParetoCDF(x, loc, scale, shape float64) float64 {
	if x <= loc {
		return 0
	}
	return 1 - math.Pow(1+shape*(x-loc)/scale, -1/shape)
}
