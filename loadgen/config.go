package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"time"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/loadgen/workload"
)

// ErrConfig marks an invalid configuration.
var ErrConfig = errors.New("loadgen: invalid configuration")

// Config describes one run. Start from Defaults. Run replaces zero fields with their defaults,
// except those where zero has a meaning of its own: Rate (closed loop), Warmup, WarmupSettle,
// GetRatio (sets only), NoLoad, KeyScramble, KernelDSCP (no mark), Seed (from the clock) and
// MetricsAddr (off).
type Config struct {
	// Server is the memcached address, HOST:PORT.
	Server string `json:"server"`
	// Proto is "udp" (memcached's UDP frame header, batched I/O) or "tcp" (text protocol).
	Proto string `json:"proto"`
	// Rate is the total offered load in requests per second on a Poisson schedule (open loop).
	// Zero means closed loop with Concurrency requests outstanding.
	Rate float64 `json:"rate"`
	// Concurrency is the number of outstanding requests in closed loop (Rate 0).
	Concurrency int `json:"concurrency"`
	// Conns is the number of sockets (UDP) or connections (TCP), each with its own sending and
	// receiving goroutine.
	Conns int `json:"conns"`
	// Duration of the measured window.
	Duration time.Duration `json:"duration_ns"`
	// Warmup runs the workload unmeasured before the window.
	Warmup time.Duration `json:"warmup_ns"`
	// WarmupSettle, when positive, extends the warmup until the hit ratio and the kernel share
	// of two consecutive one-second windows differ by at most this much (or by no more than
	// their sampling noise), up to WarmupMax.
	WarmupSettle float64 `json:"warmup_settle"`
	// WarmupMax caps a settling warmup.
	WarmupMax time.Duration `json:"warmup_max_ns"`
	// Timeout is how long a request may go unanswered before it counts as a timeout.
	Timeout time.Duration `json:"timeout_ns"`

	// Keys is the size of the key space.
	Keys uint64 `json:"keys"`
	// KeyDist is "uniform" or "zipf".
	KeyDist string `json:"key_dist"`
	// ZipfTheta is the Zipf exponent, in (0, 5).
	ZipfTheta float64 `json:"zipf_theta"`
	// KeyScramble maps Zipf ranks to keys through a bijection so that hot keys are not adjacent.
	KeyScramble bool `json:"key_scramble"`
	// KeySize is the length of every key in bytes.
	KeySize int `json:"key_size"`
	// ValueSize is a size ("32"), a weighted list ("32:0.5,1000:0.5") or "etc".
	ValueSize string `json:"value_size"`
	// MaxValueSize clamps drawn sizes (the ETC tail is unbounded). Over UDP a set must fit in one
	// datagram, so the effective clamp is at most MaxUDPValue.
	MaxValueSize int `json:"max_value_size"`
	// GetRatio is the fraction of requests that are GETs; the rest are sets. Negative means 0.
	GetRatio float64 `json:"get_ratio"`
	// NoLoad skips the load phase that sets every key before the warmup.
	NoLoad bool `json:"no_load"`

	// KernelDSCP is the DSCP value the XDP program marks its replies with (serve
	// --mark-kernel-replies); 0 means no mark, and every hit counts as user_hit.
	KernelDSCP int `json:"kernel_dscp"`
	// Batch is the most requests sent, or datagrams read, in one system call.
	Batch int `json:"batch"`
	// Seed makes key, size and arrival draws reproducible; 0 picks one from the clock.
	Seed uint64 `json:"seed"`
	// MaxLag is the send lag (actual minus intended send time) at the 99th percentile beyond
	// which the report warns that the generator did not keep its schedule.
	MaxLag time.Duration `json:"max_lag_ns"`

	// MetricsAddr, if set, serves Prometheus metrics of the run at HOST:PORT/metrics.
	MetricsAddr string `json:"metrics_addr,omitempty"`

	// Dial opens the sockets ("udp" or "tcp" to Server). Nil means a net.Dialer. UDP sockets it
	// returns must be *net.UDPConn. Run calls it only from its calling goroutine.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error) `json:"-"`

	// EchoReplies accepts a request echoed back unchanged (the bare XDP echo program the
	// generator's ceiling is measured against) as a kernel hit. Only for measuring that ceiling.
	EchoReplies bool `json:"echo_replies,omitempty"`
}

// MaxUDPValue is the largest value a UDP set carries: memcached reads a UDP request into one
// 64 KiB buffer, and the request line and frame header need room.
const MaxUDPValue = 65507 - protocol.FrameHeaderLen - 512

// Defaults returns the configuration the bench command starts from.
func Defaults() Config {
	return Config{
		Server:       "127.0.0.1:11211",
		Proto:        "udp",
		Rate:         10_000,
		Concurrency:  64,
		Conns:        2,
		Duration:     10 * time.Second,
		Warmup:       2 * time.Second,
		WarmupMax:    60 * time.Second,
		Timeout:      time.Second,
		Keys:         100_000,
		KeyDist:      "zipf",
		ZipfTheta:    0.99,
		KeySize:      16,
		ValueSize:    "32",
		MaxValueSize: 1000 * 1000,
		GetRatio:     0.9,
		KernelDSCP:   0,
		Batch:        32,
		MaxLag:       time.Millisecond,
	}
}

// fillDefaults replaces zero fields with defaults.
func (c *Config) fillDefaults() {
	d := Defaults()
	if c.Server == "" {
		c.Server = d.Server
	}
	if c.Proto == "" {
		c.Proto = d.Proto
	}
	if c.Concurrency == 0 {
		c.Concurrency = d.Concurrency
	}
	if c.Conns == 0 {
		c.Conns = d.Conns
	}
	if c.Duration == 0 {
		c.Duration = d.Duration
	}
	if c.WarmupMax == 0 {
		c.WarmupMax = d.WarmupMax
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.Keys == 0 {
		c.Keys = d.Keys
	}
	if c.KeyDist == "" {
		c.KeyDist = d.KeyDist
	}
	if c.ZipfTheta == 0 {
		c.ZipfTheta = d.ZipfTheta
	}
	if c.KeySize == 0 {
		c.KeySize = d.KeySize
	}
	if c.ValueSize == "" {
		c.ValueSize = d.ValueSize
	}
	if c.MaxValueSize == 0 {
		c.MaxValueSize = d.MaxValueSize
	}
	if c.GetRatio < 0 {
		c.GetRatio = 0
	}
	if c.Batch == 0 {
		c.Batch = d.Batch
	}
	if c.MaxLag == 0 {
		c.MaxLag = d.MaxLag
	}
}

// workloadModel is the validated, parsed form of the workload fields.
type workloadModel struct {
	keys     workload.KeyDist
	scramble *workload.Scrambler
	space    *workload.KeySpace
	sizes    workload.SizeDist
}

func (c *Config) validate() (*workloadModel, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	if c.Proto != "udp" && c.Proto != "tcp" {
		return nil, bad("proto %q: want udp or tcp", c.Proto)
	}
	if _, _, err := net.SplitHostPort(c.Server); err != nil {
		return nil, bad("server %q: %v", c.Server, err)
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return nil, bad("rate %v", c.Rate)
	}
	if c.Conns < 1 || c.Conns > 4096 {
		return nil, bad("conns %d: want 1..4096", c.Conns)
	}
	if c.Rate == 0 && c.Concurrency < c.Conns {
		return nil, bad("closed loop needs concurrency (%d) >= conns (%d)", c.Concurrency, c.Conns)
	}
	if c.Proto == "udp" && c.Rate == 0 && c.Concurrency/c.Conns > 60_000 {
		return nil, bad("concurrency %d over %d sockets exceeds the 16-bit request ids", c.Concurrency, c.Conns)
	}
	if c.Duration < 0 || c.Warmup < 0 || c.Timeout <= 0 {
		return nil, bad("durations must be positive")
	}
	if c.GetRatio > 1 || math.IsNaN(c.GetRatio) {
		return nil, bad("get ratio %v: want 0..1", c.GetRatio)
	}
	if c.KernelDSCP < 0 || c.KernelDSCP > 63 {
		return nil, bad("kernel DSCP %d: want 0..63", c.KernelDSCP)
	}
	if c.Batch < 1 || c.Batch > 1024 {
		return nil, bad("batch %d: want 1..1024", c.Batch)
	}
	m := &workloadModel{}
	var err error
	switch c.KeyDist {
	case "uniform":
		m.keys, err = workload.NewUniform(c.Keys)
	case "zipf":
		m.keys, err = workload.NewZipf(c.Keys, c.ZipfTheta)
	default:
		return nil, bad("key distribution %q: want uniform or zipf", c.KeyDist)
	}
	if err != nil {
		return nil, bad("keys: %v", err)
	}
	if c.KeyScramble {
		if m.scramble, err = workload.NewScrambler(c.Keys, c.Seed); err != nil {
			return nil, bad("scramble: %v", err)
		}
	}
	if m.space, err = workload.NewKeySpace(c.Keys, c.KeySize); err != nil {
		return nil, bad("keys: %v", err)
	}
	maxValue := c.MaxValueSize
	if c.Proto == "udp" {
		maxValue = min(maxValue, MaxUDPValue)
	}
	if m.sizes, err = workload.ParseSizes(c.ValueSize, maxValue); err != nil {
		return nil, bad("value size: %v", err)
	}
	return m, nil
}
