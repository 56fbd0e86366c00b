package client_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/bradfitz/gomemcache/memcache"
	"golang.org/x/sys/unix"

	"github.com/xdpcache/xdpcache/client"
	"github.com/xdpcache/xdpcache/internal/lab"
	"github.com/xdpcache/xdpcache/internal/lab/experiment"
	"github.com/xdpcache/xdpcache/internal/netns"
	"github.com/xdpcache/xdpcache/internal/testenv"
	"github.com/xdpcache/xdpcache/loadgen/workload"
)

// getter is what both clients offer the load: gomemcache's Get.
type getter interface {
	Get(key string) (*memcache.Item, error)
}

type loadResult struct {
	gets        int64
	seconds     float64
	cpuSeconds  float64 // the client's CPU time (benchEnv.clientCPU)
	srvCPU      float64 // the server's (benchEnv.serverCPU)
	p50, p99    float64 // µs
	p90, p999   float64 // µs, logged only
	kernelShare float64 // of the gets, as the server counts them
}

func (r loadResult) rate() float64    { return float64(r.gets) / r.seconds }
func (r loadResult) perCore() float64 { return float64(r.gets) / r.cpuSeconds }

// BenchmarkVersusGomemcache is the application-shaped comparison: many goroutines, one get in
// flight each, Zipf keys (saturated, then paced with think time for latency), against `xdpcache
// serve` with its kernel path, through this client over UDP and through gomemcache over TCP, in
// alternating rounds of the same run. It reports each client's gets per second, gets per second
// of client CPU (per client core), p50 and p99, and the medians of each round's ratios (targets:
// at least 2x per core, p99 at most 0.5x).
//
// By default the server runs on the loopback of a namespace of its own (XDP in generic mode):
//
//	go test ./client -run '^$' -bench VersusGomemcache -benchtime 1x
//
// Confined to one CPU (taskset), the test moves the server and, through RPS on that loopback,
// the packet processing of both directions to another CPU:
//
//	go test -c -o client.test ./client && (cd client && taskset -c 0 ../client.test -test.run '^$' -test.bench VersusGomemcache -test.benchtime 1x)
//
// With CLIENT_BENCH_VETH=1, and confined to one CPU, it runs as on two machines: the client in
// one namespace and the server in another, joined by a veth pair with the XDP program in native
// mode on the server's side, each veth's receive work in a NAPI thread pinned to its side's CPU.
// The client's CPU is then the test process's plus its veth's NAPI thread's (its receive
// path), the server's the serve process's plus its veth's (the XDP program, the server's
// receive path):
//
//	(cd client && CLIENT_BENCH_VETH=1 taskset -c 0 ../client.test -test.run '^$' -test.bench VersusGomemcache -test.benchtime 1x)
func BenchmarkVersusGomemcache(b *testing.B) {
	testenv.RequireRoot(b)
	const (
		port       = 11211
		keys       = 10000
		valueSize  = 100
		theta      = 0.99
		goroutines = 32
		rounds     = 5
		runFor     = 1500 * time.Millisecond
		pacedFor   = 4 * time.Second      // a p99 of some 25,000 gets per run
		think      = 4 * time.Millisecond // paced: the mean pause, about 32/4ms = 8 K gets/s offered
	)
	bin := filepath.Join(b.TempDir(), "xdpcache")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/xdpcache").CombinedOutput(); err != nil {
		b.Fatalf("build xdpcache: %v\n%s", err, out)
	}
	var env benchEnv
	if os.Getenv("CLIENT_BENCH_VETH") != "" {
		env = vethEnv(b, bin)
	} else {
		env = loopbackEnv(b, bin, port)
	}
	defer env.close()
	dial, addr := env.dial, env.addr
	waitTCP(b, dial, addr)

	uc := client.New(addr)
	uc.KernelDSCP = env.dscp
	uc.MaxIdleConns = goroutines
	uc.Timeout = 5 * time.Second // a crowded machine stalls the server for longer than the 500 ms default
	uc.DialContext = dial
	uc.DialUDP = func(ctx context.Context, network, address string) (*net.UDPConn, error) {
		nc, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		return nc.(*net.UDPConn), nil
	}
	defer uc.Close()
	mc := memcache.New(addr)
	mc.MaxIdleConns = goroutines // one connection per goroutine, none dialled per request
	mc.Timeout = 5 * time.Second
	mc.DialContext = dial
	defer mc.Close()

	key := func(i uint64) string { return "key:" + strconv.FormatUint(i, 10) }
	value := make([]byte, valueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	for i := range uint64(keys) {
		if err := mc.Set(&memcache.Item{Key: key(i), Value: value}); err != nil {
			b.Fatalf("load: %v", err)
		}
		if _, err := uc.Get(key(i)); err != nil { // the first UDP get fills the kernel cache
			b.Fatalf("warm: %v", err)
		}
	}
	zipf, err := workload.NewZipf(keys, theta)
	if err != nil {
		b.Fatal(err)
	}
	stats := func() map[string]float64 { return serverStats(b, dial, addr) }

	run := func(g getter, think, runFor time.Duration) loadResult {
		before, cpu0, srv0 := stats(), env.clientCPU(), env.serverCPU()
		var gets atomic.Int64
		var mu sync.Mutex
		all := hdrhistogram.New(1, 10_000_000, 3)
		var wg sync.WaitGroup
		stop := time.Now().Add(runFor)
		start := time.Now()
		for w := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := hdrhistogram.New(1, 10_000_000, 3)
				r := rand.New(rand.NewPCG(uint64(w), 99))
				n := int64(0)
				for ; n&63 != 0 || time.Now().Before(stop); n++ {
					k := key(zipf.Next(r))
					t0 := time.Now()
					if _, err := g.Get(k); err != nil {
						b.Errorf("get %s: %v", k, err)
						return
					}
					_ = h.RecordValue(time.Since(t0).Nanoseconds() / 1000)
					if think > 0 {
						// Exponential pauses: a fixed one keeps the goroutines in step,
						// and their gets arrive as bursts that queue.
						time.Sleep(time.Duration(r.ExpFloat64() * float64(think)))
					}
				}
				gets.Add(n)
				mu.Lock()
				all.Merge(h)
				mu.Unlock()
			}()
		}
		wg.Wait()
		res := loadResult{gets: gets.Load(), seconds: time.Since(start).Seconds(), cpuSeconds: env.clientCPU() - cpu0,
			srvCPU: env.serverCPU() - srv0,
			p50:    float64(all.ValueAtQuantile(50)), p99: float64(all.ValueAtQuantile(99)),
			p90: float64(all.ValueAtQuantile(90)), p999: float64(all.ValueAtQuantile(99.9))}
		after := stats()
		if d := after["cmd_get"] - before["cmd_get"]; d > 0 {
			res.kernelShare = (after["kernel_get_hits"] - before["kernel_get_hits"]) / d
		}
		return res
	}

	for b.Loop() {
		// Saturated: no think time, the most gets each client pushes through, and its CPU per get.
		// Paced: each goroutine thinks between gets, so that neither client queues and the
		// latency is the path's, not the queue's (Little's law rules a saturated closed loop).
		var udp, tcp, udpPaced, tcpPaced []loadResult
		for i := range rounds {
			tcp = append(tcp, run(mc, 0, runFor))
			udp = append(udp, run(uc, 0, runFor))
			tcpPaced = append(tcpPaced, run(mc, think, pacedFor))
			udpPaced = append(udpPaced, run(uc, think, pacedFor))
			b.Logf("round %d saturated: gomemcache/TCP %s; client/UDP %s", i+1, tcp[i], udp[i])
			b.Logf("round %d paced: gomemcache/TCP %s; client/UDP %s", i+1, tcpPaced[i], udpPaced[i])
		}
		s := uc.Stats()
		if s.TCPGets != 0 {
			b.Logf("client fallbacks to TCP: %+v", s)
		}
		b.ReportMetric(float64(s.UDPDatagrams)/float64(s.UDPSends), "udp_datagrams/send")
		med := func(rs []loadResult, f func(loadResult) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		ratio := func(u, t []loadResult, f func(loadResult) float64) float64 {
			v := make([]float64, len(u))
			for i := range u {
				v[i] = f(u[i]) / f(t[i])
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		rate, perCore := loadResult.rate, loadResult.perCore
		p50, p99 := func(r loadResult) float64 { return r.p50 }, func(r loadResult) float64 { return r.p99 }
		b.ReportMetric(med(tcp, rate), "tcp_gets/s")
		b.ReportMetric(med(udp, rate), "udp_gets/s")
		b.ReportMetric(med(tcp, perCore), "tcp_gets/cpu-s")
		b.ReportMetric(med(udp, perCore), "udp_gets/cpu-s")
		b.ReportMetric(ratio(udp, tcp, rate), "rate_ratio")
		b.ReportMetric(ratio(udp, tcp, perCore), "per_core_ratio")
		b.ReportMetric(med(tcpPaced, p50), "tcp_paced_p50_us")
		b.ReportMetric(med(udpPaced, p50), "udp_paced_p50_us")
		b.ReportMetric(med(tcpPaced, p99), "tcp_paced_p99_us")
		b.ReportMetric(med(udpPaced, p99), "udp_paced_p99_us")
		b.ReportMetric(ratio(udpPaced, tcpPaced, p50), "paced_p50_ratio")
		b.ReportMetric(ratio(udpPaced, tcpPaced, p99), "paced_p99_ratio")
		b.ReportMetric(ratio(udp, tcp, p50), "saturated_p50_ratio")
		b.ReportMetric(ratio(udp, tcp, p99), "saturated_p99_ratio")
		b.ReportMetric(med(udp, loadResult.kernelShareOf), "kernel_share")
	}
}

func (r loadResult) kernelShareOf() float64 { return r.kernelShare }

func (r loadResult) String() string {
	return fmt.Sprintf("%.0f gets/s, %.0f gets/s per client core (client CPU %.2f s, server %.2f s), p50 %.0f µs, p90 %.0f µs, p99 %.0f µs, p99.9 %.0f µs, kernel share %.1f%%",
		r.rate(), r.perCore(), r.cpuSeconds, r.srvCPU, r.p50, r.p90, r.p99, r.p999, 100*r.kernelShare)
}

// otherCPU returns an online CPU of the machine outside set, or -1 if set holds them all.
func otherCPU(set *unix.CPUSet) int {
	for cpu := range 1024 {
		if _, err := os.Stat(fmt.Sprintf("/sys/devices/system/cpu/cpu%d", cpu)); err != nil {
			return -1
		}
		online, err := os.ReadFile(fmt.Sprintf("/sys/devices/system/cpu/cpu%d/online", cpu))
		if !set.IsSet(cpu) && (err != nil || strings.TrimSpace(string(online)) == "1") {
			return cpu // cpu0 has no online file: it is always online
		}
	}
	return -1
}

func waitTCP(b *testing.B, dial func(context.Context, string, string) (net.Conn, error), addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := dial(ctx, "tcp", addr)
		cancel()
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("serve not listening on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serverStats reads the server's `stats` over TCP.
func serverStats(b *testing.B, dial func(context.Context, string, string) (net.Conn, error), addr string) map[string]float64 {
	c, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		b.Fatalf("stats: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("stats\r\n")); err != nil {
		b.Fatalf("stats: %v", err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 1 && f[0] == "END" {
			return out
		}
		if len(f) == 3 && f[0] == "STAT" {
			if v, err := strconv.ParseFloat(f[2], 64); err == nil {
				out[f[1]] = v
			}
		}
	}
	b.Fatalf("stats: %v", sc.Err())
	return nil
}

// cpuSeconds is this process's user and system time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// procCPUSeconds is another process's user and system time in seconds.
func procCPUSeconds(b *testing.B, pid int) float64 {
	t, err := experiment.ProcCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return t.Seconds()
}

// benchEnv is where the benchmark's server runs and how its CPU is counted.
type benchEnv struct {
	addr                 string
	dial                 func(ctx context.Context, network, address string) (net.Conn, error)
	dscp                 int
	clientCPU, serverCPU func() float64 // seconds
	close                func()
}

// loopbackEnv runs serve on the loopback of a namespace of its own, XDP in generic mode. With
// the test confined to some CPUs, the server and, through RPS on that loopback, the packet
// processing go to another.
func loopbackEnv(b *testing.B, bin string, port int) benchEnv {
	ns, err := netns.NewIsolated("xcclb")
	if err != nil {
		b.Fatalf("create namespace: %v", err)
	}
	var mine unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mine); err != nil {
		b.Fatal(err)
	}
	pin := []string{}
	if other := otherCPU(&mine); other >= 0 {
		mask := strconv.FormatUint(1<<other, 16)
		if out, err := exec.Command("ip", "netns", "exec", ns.Name, "sh", "-c",
			"echo "+mask+" > /sys/class/net/lo/queues/rx-0/rps_cpus").CombinedOutput(); err != nil {
			b.Fatalf("RPS on lo: %v %s", err, out)
		}
		pin = []string{"taskset", "-c", strconv.Itoa(other)}
		b.Logf("client on %d CPU(s); server, XDP and packet processing on CPU %d", mine.Count(), other)
	} else {
		b.Logf("client, server and packet processing share the CPUs (pin the test with taskset to separate them)")
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := append(pin, "ip", "netns", "exec", ns.Name, bin, "serve", "-l", "127.0.0.1",
		"-p", strconv.Itoa(port), "-U", strconv.Itoa(port), "--xdp-iface", "lo", "--xdp-mode", "generic",
		"--mark-kernel-replies", strconv.Itoa(kernelDSCP), "--admission", "always", "--log-level", "warn")
	srv := exec.Command(args[0], args[1:]...)
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		ns.Close()
		b.Fatalf("start serve: %v", err)
	}
	return benchEnv{
		addr: addr,
		dial: func(ctx context.Context, network, address string) (conn net.Conn, err error) {
			err = ns.Do(func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, address)
				return err
			})
			return conn, err
		},
		dscp:      kernelDSCP,
		clientCPU: cpuSeconds,
		serverCPU: func() float64 { return procCPUSeconds(b, srv.Process.Pid) },
		close: func() {
			_ = srv.Process.Signal(syscall.SIGTERM)
			_ = srv.Wait()
			ns.Close()
		},
	}
}

// vethEnv runs serve in the server namespace of experiment's lab, the XDP program native on its
// veth, with the test (confined to one CPU) as the client in the client namespace.
func vethEnv(b *testing.B, bin string) benchEnv {
	var mine unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mine); err != nil {
		b.Fatal(err)
	}
	other := otherCPU(&mine)
	if mine.Count() != 1 || other < 0 {
		b.Fatalf("CLIENT_BENCH_VETH needs the test confined to one CPU (taskset -c N) and another CPU for the server")
	}
	clientCPU := 0
	for !mine.IsSet(clientCPU) {
		clientCPU++
	}
	l, err := experiment.NewLab(bin, other, clientCPU, io.Discard)
	if err != nil {
		b.Fatalf("lab: %v", err)
	}
	p, err := l.Serve(context.Background(), b.TempDir(), true, "--admission", "always")
	if err != nil {
		l.Close()
		b.Fatalf("serve: %v", err)
	}
	b.Logf("client on CPU %d, server and its veth's NAPI thread on CPU %d (XDP native)", clientCPU, other)
	napiCPU := func(pids func() ([]int, error)) float64 {
		ps, err := pids()
		if err != nil || len(ps) == 0 {
			b.Fatalf("NAPI threads: %v (%d found)", err, len(ps))
		}
		sum := 0.0
		for _, pid := range ps {
			sum += procCPUSeconds(b, pid)
		}
		return sum
	}
	return benchEnv{
		addr: l.ServerAddr(),
		dial: func(ctx context.Context, network, address string) (conn net.Conn, err error) {
			err = l.Pair().Client.Do(func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, address)
				return err
			})
			return conn, err
		},
		dscp:      lab.ReplyDSCP,
		clientCPU: func() float64 { return cpuSeconds() + napiCPU(l.ClientNAPI) },
		serverCPU: func() float64 { return procCPUSeconds(b, p.Pid()) + napiCPU(l.ServerNAPI) },
		close: func() {
			p.Stop()
			l.Close()
		},
	}
}
