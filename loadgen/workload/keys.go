package workload

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"strconv"
)

// Sentinel errors of the key generators.
var (
	ErrKeySpace  = errors.New("workload: key space must hold at least one key")
	ErrTheta     = errors.New("workload: zipf theta must be in (0, 5)")
	ErrKeySize   = errors.New("workload: key size too small for the key space")
	ErrKeyTooBig = errors.New("workload: key size over memcached's 250-byte limit")
)

// KeyDist draws a rank in [0, n); rank 0 is the most frequent key.
type KeyDist interface {
	Next(r *rand.Rand) uint64
	// N is the size of the key space.
	N() uint64
}

// Uniform draws every rank with the same probability.
type Uniform struct{ n uint64 }

// NewUniform returns a uniform distribution over n keys.
func NewUniform(n uint64) (*Uniform, error) {
	if n == 0 {
		return nil, ErrKeySpace
	}
	return &Uniform{n: n}, nil
}

// Next draws a rank.
func (u *Uniform) Next(r *rand.Rand) uint64 { return r.Uint64N(u.n) }

// N is the size of the key space.
func (u *Uniform) N() uint64 { return u.n }

// Zipf draws rank k (0-based) with probability proportional to 1/(k+1)^theta, for any theta in
// (0, 5). math/rand's Zipf needs theta > 1 and YCSB's generator needs an O(n) zeta sum; this is
// Hörmann and Derflinger's rejection-inversion sampler ("Rejection-inversion to generate variates
// from monotone discrete distributions", 1996) as in Apache Commons RNG: O(1) setup, about one
// uniform variate per draw, exact for every theta including 1.
type Zipf struct {
	n                float64
	nInt             uint64
	s                float64
	hIntegralX1      float64
	hIntegralN       float64
	sThreshold       float64
	oneMinusS        float64
	negS             float64
	hIntegralOneHalf float64
}

// NewZipf returns a Zipf distribution over n keys with exponent theta.
func NewZipf(n uint64, theta float64) (*Zipf, error) {
	if n == 0 {
		return nil, ErrKeySpace
	}
	if !(theta > 0 && theta < 5) {
		return nil, fmt.Errorf("%w: got %v", ErrTheta, theta)
	}
	z := &Zipf{n: float64(n), nInt: n, s: theta, oneMinusS: 1 - theta, negS: -theta}
	z.hIntegralX1 = z.hIntegral(1.5) - 1
	z.hIntegralN = z.hIntegral(float64(n) + 0.5)
	z.sThreshold = 2 - z.hIntegralInverse(z.hIntegral(2.5)-z.h(2))
	return z, nil
}

// N is the size of the key space.
func (z *Zipf) N() uint64 { return z.nInt }

// Next draws a rank.
func (z *Zipf) Next(r *rand.Rand) uint64 {
	// The loop accepts with probability above 0.5 for any theta, usually far above; the bound
	// only guards against a broken source.
	for range 1000 {
		u := z.hIntegralN + r.Float64()*(z.hIntegralX1-z.hIntegralN)
		x := z.hIntegralInverse(u)
		k := math.Floor(x + 0.5)
		if k < 1 {
			k = 1
		} else if k > z.n {
			k = z.n
		}
		if k-x <= z.sThreshold || u >= z.hIntegral(k+0.5)-z.h(k) {
			return uint64(k) - 1
		}
	}
	return 0
}

// h is the unnormalised density x^-s.
func (z *Zipf) h(x float64) float64 { return math.Exp(z.negS * math.Log(x)) }

// hIntegral is an antiderivative of h: (x^(1-s) - 1)/(1-s), continuous at s = 1 (log x).
func (z *Zipf) hIntegral(x float64) float64 {
	lx := math.Log(x)
	return helper2(z.oneMinusS*lx) * lx
}

func (z *Zipf) hIntegralInverse(x float64) float64 {
	t := x * z.oneMinusS
	if t < -1 {
		t = -1 // rounding can push t just below -1, where log1p diverges
	}
	return math.Exp(helper1(t) * x)
}

// helper1 is log1p(x)/x, with its series near 0.
func helper1(x float64) float64 {
	if math.Abs(x) > 1e-8 {
		return math.Log1p(x) / x
	}
	return 1 - x*(0.5-x*(1.0/3.0-0.25*x))
}

// helper2 is expm1(x)/x, with its series near 0.
func helper2(x float64) float64 {
	if math.Abs(x) > 1e-8 {
		return math.Expm1(x) / x
	}
	return 1 + x*0.5*(1+x/3*(1+0.25*x))
}

// ZipfProb is the exact probability of rank k (0-based) among n keys with exponent theta. It costs
// O(n) and exists for tests and reports.
func ZipfProb(n uint64, theta float64, k uint64) float64 {
	var norm float64
	for i := uint64(1); i <= n; i++ {
		norm += math.Pow(float64(i), -theta)
	}
	return math.Pow(float64(k+1), -theta) / norm
}

// Scrambler maps ranks to key indices through a keyed bijection of [0, n), so that hot keys are
// not adjacent (they would otherwise share hash buckets, slabs or cache lines in ways real hot
// keys do not). It is a four-round Feistel network over the smallest even power of two holding n,
// with cycle walking to stay inside [0, n).
type Scrambler struct {
	n    uint64
	half uint // bits per Feistel half
	mask uint64
	keys [4]uint64
}

// NewScrambler returns the bijection of [0, n) selected by seed.
func NewScrambler(n uint64, seed uint64) (*Scrambler, error) {
	if n == 0 {
		return nil, ErrKeySpace
	}
	b := uint(bits.Len64(n - 1))
	if b < 2 {
		b = 2
	}
	half := (b + 1) / 2
	s := &Scrambler{n: n, half: half, mask: 1<<half - 1}
	for i := range s.keys {
		seed = splitmix(seed)
		s.keys[i] = seed
	}
	return s, nil
}

// Map returns the key index of rank.
func (s *Scrambler) Map(rank uint64) uint64 {
	x := rank
	// The domain is under 4n, so cycle walking ends after a few steps on average; a rank always
	// returns to [0, n) because the permutation restricted to the domain is a union of cycles.
	for {
		x = s.permute(x)
		if x < s.n {
			return x
		}
	}
}

func (s *Scrambler) permute(x uint64) uint64 {
	l, r := x>>s.half, x&s.mask
	for _, k := range s.keys {
		l, r = r, l^(splitmix(r^k)&s.mask)
	}
	return l<<s.half | r
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// KeySpace formats key indices as fixed-size memcached keys: a prefix and the index in decimal,
// zero-padded to Size bytes.
type KeySpace struct {
	n      uint64
	size   int
	digits int
	prefix string
}

// MaxKeySize is memcached's key length limit.
const MaxKeySize = 250

// NewKeySpace returns the formatter for n keys of size bytes each. size must leave room for the
// one-byte prefix and the digits of n-1.
func NewKeySpace(n uint64, size int) (*KeySpace, error) {
	if n == 0 {
		return nil, ErrKeySpace
	}
	if size > MaxKeySize {
		return nil, fmt.Errorf("%w: %d", ErrKeyTooBig, size)
	}
	need := 1 + len(strconv.FormatUint(n-1, 10))
	if size < need {
		return nil, fmt.Errorf("%w: %d keys need %d bytes, got %d", ErrKeySize, n, need, size)
	}
	return &KeySpace{n: n, size: size, digits: size - 1, prefix: "k"}, nil
}

// N is the number of keys.
func (k *KeySpace) N() uint64 { return k.n }

// Size is the length of every key.
func (k *KeySpace) Size() int { return k.size }

// Append appends the key of index i to dst.
func (k *KeySpace) Append(dst []byte, i uint64) []byte {
	dst = append(dst, k.prefix...)
	start := len(dst)
	for range k.digits {
		dst = append(dst, '0')
	}
	for p := len(dst) - 1; p >= start && i > 0; p-- {
		dst[p] = byte('0' + i%10)
		i /= 10
	}
	return dst
}

// Index parses a key made by Append; ok is false for anything else.
func (k *KeySpace) Index(key []byte) (i uint64, ok bool) {
	if len(key) != k.size || string(key[:len(k.prefix)]) != k.prefix {
		return 0, false
	}
	for _, c := range key[len(k.prefix):] {
		if c < '0' || c > '9' {
			return 0, false
		}
		i = i*10 + uint64(c-'0')
	}
	return i, i < k.n
}
