package workload

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x5eed)) }

// TestZipfFrequencies draws from the sampler and compares the rank frequencies to the exact
// formula: a chi-square test over all ranks and a binomial bound on each of the hottest ranks.
func TestZipfFrequencies(t *testing.T) {
	const n, draws = 1000, 2_000_000
	for _, theta := range []float64{0.5, 0.99, 1.0, 1.5, 4.5} {
		z, err := NewZipf(n, theta)
		if err != nil {
			t.Fatal(err)
		}
		r := newRand(uint64(theta * 1000))
		counts := make([]int, n)
		for range draws {
			k := z.Next(r)
			if k >= n {
				t.Fatalf("theta %v: rank %d out of range", theta, k)
			}
			counts[k]++
		}
		var norm float64
		for i := 1; i <= n; i++ {
			norm += math.Pow(float64(i), -theta)
		}
		var chi2 float64
		df := -1
		var pooledObs, pooledExp float64
		for k := range n {
			p := math.Pow(float64(k+1), -theta) / norm
			exp := p * draws
			obs := float64(counts[k])
			if k < 5 {
				sd := math.Sqrt(draws * p * (1 - p))
				if math.Abs(obs-exp) > 5*sd {
					t.Errorf("theta %v rank %d: %v draws, want %.0f ± %.0f", theta, k, obs, exp, 5*sd)
				}
			}
			// Pool the tail so every chi-square cell expects at least 20 draws.
			pooledObs += obs
			pooledExp += exp
			if pooledExp >= 20 || k == n-1 {
				chi2 += (pooledObs - pooledExp) * (pooledObs - pooledExp) / pooledExp
				df++
				pooledObs, pooledExp = 0, 0
			}
		}
		// The statistic has mean df and standard deviation sqrt(2 df); 6 deviations over is a
		// sampler bug, not chance (the seed is fixed anyway).
		if limit := float64(df) + 6*math.Sqrt(2*float64(df)); chi2 > limit {
			t.Errorf("theta %v: chi-square %.0f over %d cells, limit %.0f", theta, chi2, df+1, limit)
		}
		if got, want := float64(counts[0])/draws, ZipfProb(n, theta, 0); math.Abs(got-want) > 0.01 {
			t.Errorf("theta %v: rank 0 frequency %.4f, formula %.4f", theta, got, want)
		}
	}
}

func TestZipfLargeKeySpace(t *testing.T) {
	const n = 1_000_000_000
	z, err := NewZipf(n, 0.99)
	if err != nil {
		t.Fatal(err)
	}
	r := newRand(1)
	var top, big int
	for range 200_000 {
		k := z.Next(r)
		if k >= n {
			t.Fatalf("rank %d out of range", k)
		}
		if k == 0 {
			top++
		}
		if k > n/2 {
			big++
		}
	}
	// H(1e9, 0.99) is about 22.9, so rank 0 takes about 4.4% of draws; the upper half of the key
	// space still receives a few percent.
	if f := float64(top) / 200_000; f < 0.040 || f > 0.048 {
		t.Errorf("rank 0 frequency %.4f, want about 0.044", f)
	}
	if big == 0 {
		t.Error("no draw ever reached the upper half of the key space")
	}
}

func TestZipfRejectsTheta(t *testing.T) {
	for _, th := range []float64{0, -1, 5, math.NaN(), math.Inf(1)} {
		if _, err := NewZipf(10, th); !errors.Is(err, ErrTheta) {
			t.Errorf("theta %v: err %v, want ErrTheta", th, err)
		}
	}
	if _, err := NewZipf(0, 1); !errors.Is(err, ErrKeySpace) {
		t.Errorf("empty key space: err %v", err)
	}
}

func TestUniform(t *testing.T) {
	u, _ := NewUniform(10)
	r := newRand(2)
	var c [10]int
	for range 100_000 {
		c[u.Next(r)]++
	}
	for k, v := range c {
		if v < 9_500 || v > 10_500 {
			t.Errorf("key %d drawn %d times of 100000, want about 10000", k, v)
		}
	}
}

func TestScramblerIsBijection(t *testing.T) {
	for _, n := range []uint64{1, 2, 3, 7, 1000, 1<<16 + 3} {
		s, err := NewScrambler(n, 42)
		if err != nil {
			t.Fatal(err)
		}
		seen := make([]bool, n)
		adjacent := 0
		for i := range n {
			m := s.Map(i)
			if m >= n {
				t.Fatalf("n=%d: Map(%d) = %d out of range", n, i, m)
			}
			if seen[m] {
				t.Fatalf("n=%d: Map(%d) = %d twice", n, i, m)
			}
			seen[m] = true
			if i > 0 && (m == s.Map(i-1)+1 || m+1 == s.Map(i-1)) {
				adjacent++
			}
		}
		if n >= 1000 && adjacent > int(n/50) {
			t.Errorf("n=%d: %d consecutive ranks map to adjacent keys", n, adjacent)
		}
	}
}

func TestKeySpace(t *testing.T) {
	ks, err := NewKeySpace(1000, 16)
	if err != nil {
		t.Fatal(err)
	}
	k := ks.Append(nil, 42)
	if string(k) != "k000000000000042" {
		t.Fatalf("key %q", k)
	}
	if i, ok := ks.Index(k); !ok || i != 42 {
		t.Fatalf("Index(%q) = %d, %v", k, i, ok)
	}
	for _, bad := range []string{"k00000000000004x", "x000000000000042", "k00000000000042", "k000000000001000"} {
		if _, ok := ks.Index([]byte(bad)); ok {
			t.Errorf("Index(%q) accepted", bad)
		}
	}
	if _, err := NewKeySpace(1000, 3); !errors.Is(err, ErrKeySize) {
		t.Errorf("3-byte keys for 1000 keys: err %v", err)
	}
	if _, err := NewKeySpace(1000, 251); !errors.Is(err, ErrKeyTooBig) {
		t.Errorf("251-byte keys: err %v", err)
	}
	if _, err := NewKeySpace(1000, 4); err != nil {
		t.Errorf("4-byte keys for 1000 keys: %v", err)
	}
}

func TestPoissonGaps(t *testing.T) {
	const rate, draws = 50_000.0, 1_000_000
	p, err := NewPoisson(rate)
	if err != nil {
		t.Fatal(err)
	}
	r := newRand(3)
	var sum, sum2 float64
	for range draws {
		g := p.NextGapNs(r)
		sum += g
		sum2 += g * g
	}
	mean := sum / draws
	cv := math.Sqrt(sum2/draws-mean*mean) / mean
	if want := 1e9 / rate; math.Abs(mean-want)/want > 0.01 {
		t.Errorf("mean gap %.1f ns, want %.1f ± 1%%", mean, want)
	}
	// An exponential distribution has a coefficient of variation of exactly 1; a periodic
	// schedule would have 0.
	if math.Abs(cv-1) > 0.01 {
		t.Errorf("coefficient of variation %.4f, want 1 ± 0.01", cv)
	}
	for _, bad := range []float64{0, -5, math.NaN()} {
		if _, err := NewPoisson(bad); !errors.Is(err, ErrRate) {
			t.Errorf("rate %v: err %v", bad, err)
		}
	}
}

func TestParseSizes(t *testing.T) {
	d, err := ParseSizes("32", 1000)
	if err != nil || d.Next(nil) != 32 || d.Max() != 32 {
		t.Fatalf("fixed: %v %v", d, err)
	}
	w, err := ParseSizes("32:0.5,1000:1.5", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if w.Max() != 1000 || math.Abs(w.Mean()-(32*0.25+1000*0.75)) > 1e-9 {
		t.Errorf("weighted max %d mean %v", w.Max(), w.Mean())
	}
	r := newRand(4)
	small := 0
	for range 100_000 {
		switch w.Next(r) {
		case 32:
			small++
		case 1000:
		default:
			t.Fatal("weighted drew an unlisted size")
		}
	}
	if small < 24_000 || small > 26_000 {
		t.Errorf("size 32 drawn %d of 100000, want about 25000", small)
	}
	for _, bad := range []string{"", "x", "-1", "32:0", "32:x", "32:0.5,", "2000"} {
		if _, err := ParseSizes(bad, 1000); !errors.Is(err, ErrValueSpec) {
			t.Errorf("ParseSizes(%q): err %v, want ErrValueSpec", bad, err)
		}
	}
}

// TestETCSizes compares the empirical distribution of ETC sizes with the generalized Pareto CDF
// (Kolmogorov-Smirnov distance at a few points, allowing for rounding up to whole bytes).
func TestETCSizes(t *testing.T) {
	const draws = 500_000
	d, err := ParseSizes("etc", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	r := newRand(5)
	points := []float64{10, 50, 100, 214, 500, 1000, 5000}
	below := make([]int, len(points))
	for range draws {
		s := d.Next(r)
		if s < 1 || s > 1<<20 {
			t.Fatalf("size %d out of [1, 1MiB]", s)
		}
		for i, p := range points {
			if float64(s) <= p {
				below[i]++
			}
		}
	}
	for i, p := range points {
		got := float64(below[i]) / draws
		// A size s <= p exactly when the continuous draw is <= p (sizes are ceilings).
		want := GParetoCDF(p, ETCLocation, ETCScale, ETCShape)
		if math.Abs(got-want) > 0.005 {
			t.Errorf("P(size <= %v) = %.4f, model %.4f", p, got, want)
		}
	}
	if m := d.Mean(); math.Abs(m-329.1) > 1 {
		t.Errorf("ETC mean %v, want about 329", m)
	}
}
