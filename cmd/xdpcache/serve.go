package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/xdpcache/xdpcache/bpf"
	"github.com/xdpcache/xdpcache/internal/health"
	"github.com/xdpcache/xdpcache/internal/takeover"
	"github.com/xdpcache/xdpcache/server"
)

// version is ours; `version` on the wire puts memcached's protocol version first.
const version = "0.1.0"

func init() { rootCmd.AddCommand(newServeCmd()) }

type serveFlags struct {
	port, udpPort    int
	udpReaders       int
	listen           string
	memoryMiB        int64
	connLimit        int
	maxItemSize      string
	xdpIface         string
	xdpMode          string
	markDSCP         uint8
	kernelCacheMiB   int64
	kernelEntries    int
	admission        string
	metricsAddr      string
	upstreams        []string
	kernelMaxAge     time.Duration
	upstreamDial     time.Duration
	upstreamTimeout  time.Duration
	allowSources     []string
	ratePerSource    float64
	burst            int
	maxAmp           float64
	idleTimeout      time.Duration
	writeTimeout     time.Duration
	logLevel, logFmt string
	shutdownTimeout  time.Duration
	takeover         bool
	controlSocket    string
	afterHandover    string
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the memcached server, optionally with UDP GET hits answered by XDP in the kernel",
		Long: `serve runs a memcached-compatible server (text and meta protocol, TCP and UDP).

With --xdp-iface, an XDP program on that interface answers UDP GET hits for keys in the kernel cache
without waking the server. The server copies items into the kernel cache when it answers UDP GET hits
(--admission decides which), and every write drops the kernel copy before it is acknowledged. The
program is detached when serve exits, however it exits. If the program cannot be attached (no such
interface, another XDP program there, no privilege) the server still runs without it and says so.

serve --takeover upgrades a running serve in place: the new process takes the listening sockets, the
open connections, the XDP and TC attachments (the program is replaced on them in place) and the items
over a unix control socket, and the old one exits. SIGHUP makes a running serve start its successor
itself, the same binary path with the same flags plus --takeover. docs/OPERATIONS.md has the details.`,
		Example: `  xdpcache serve                                   # like memcached -U 11211 on 127.0.0.1
  xdpcache serve --takeover ...same flags...        # upgrade: take over from the running serve without a dropped request
  kill -HUP $(pidof xdpcache)                       # the same, started by the running serve itself (systemctl reload)
  xdpcache serve -l 0.0.0.0 --xdp-iface eth0        # as root: kernel path on eth0, native XDP if the driver has it
  xdpcache serve --xdp-iface lo --xdp-mode generic --metrics-addr 127.0.0.1:9150   # as root`,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServe(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.IntVarP(&f.port, "port", "p", 11211, "TCP port (0: no TCP)")
	fl.IntVarP(&f.udpPort, "udp-port", "U", 11211, "UDP port (0: no UDP, and no kernel path)")
	fl.IntVar(&f.udpReaders, "udp-readers", 0, "goroutines answering the UDP socket (0: 1, or 16 with --upstream, where a UDP miss waits for memcached)")
	fl.StringVarP(&f.listen, "listen", "l", "127.0.0.1", "address to listen on")
	fl.Int64VarP(&f.memoryMiB, "memory-limit", "m", 64, "item memory in MiB; least recently used items are evicted beyond it")
	fl.IntVarP(&f.connLimit, "conn-limit", "c", 1024, "maximum simultaneous TCP connections")
	fl.StringVarP(&f.maxItemSize, "max-item-size", "I", "1m", "largest item (k, m suffixes), as memcached's -I")
	fl.StringVar(&f.xdpIface, "xdp-iface", "", "interface to attach the XDP program to (empty: no kernel cache)")
	fl.StringVar(&f.xdpMode, "xdp-mode", "auto", "XDP attach mode: auto (native, else generic), native or generic")
	fl.Uint8Var(&f.markDSCP, "mark-kernel-replies", 0, "DSCP (1-63) set on replies the kernel sends, so clients can tell who answered (0: off)")
	fl.Int64Var(&f.kernelCacheMiB, "kernel-cache-mb", 64, "kernel cache budget in MiB of entries")
	fl.IntVar(&f.kernelEntries, "kernel-cache-entries", 262144, "kernel cache entry limit")
	fl.StringVar(&f.admission, "admission", "frequency", "which UDP GET hits enter the kernel cache: always, or frequency (keys seen repeatedly, and, when the cache is full, more often than the key they would evict)")
	fl.StringSliceVar(&f.upstreams, "upstream", nil, "front these memcached servers (HOST:PORT[,...]): keys placed by ketama, misses fetched, writes forwarded (docs/UPSTREAM.md)")
	fl.DurationVar(&f.kernelMaxAge, "kernel-max-age", time.Second, "with --upstream: longest a fetched value is served locally or by the kernel (other clients may write upstream directly)")
	fl.DurationVar(&f.upstreamDial, "upstream-dial-timeout", 500*time.Millisecond, "with --upstream: connect timeout")
	fl.DurationVar(&f.upstreamTimeout, "upstream-timeout", time.Second, "with --upstream: timeout of one request; then that upstream is marked down and probed every second")
	fl.StringSliceVar(&f.allowSources, "allow-sources", nil, "CIDR[,CIDR...] of clients the UDP path answers, kernel and server alike: given, exactly these, loopback not added (default: loopback and the listen/XDP interface's subnets)")
	fl.Float64Var(&f.ratePerSource, "rate-per-source", 0, "UDP replies per second to one source address, kernel and server alike (0: unlimited)")
	fl.IntVar(&f.burst, "burst", 0, "with --rate-per-source: replies a source may get at once (0: one second's worth)")
	fl.Float64Var(&f.maxAmp, "max-amplification", bpf.DefaultMaxAmplification, "cap on UDP reply bytes per request byte, kernel and server alike (0: off). The default lets every one-datagram reply through; a larger one is answered \"SERVER_ERROR object too large for UDP, use TCP\"")
	fl.DurationVar(&f.idleTimeout, "idle-timeout", 0, "close TCP connections idle this long, as memcached's -o idle_timeout (0: never)")
	fl.DurationVar(&f.writeTimeout, "write-timeout", server.DefaultWriteTimeout, "close TCP connections whose client takes none of a reply for this long")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on HOST:PORT at /metrics (empty: off)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFmt, "log-format", "console", "console or json")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long SIGTERM waits for in-flight requests")
	fl.BoolVar(&f.takeover, "takeover", false, "take the sockets, connections, kernel path and items over from a running serve with the same ports and --xdp-iface (over --control-socket), then serve; with none running, start as usual")
	fl.StringVar(&f.controlSocket, "control-socket", "", "unix socket on which serve hands itself over to a serve --takeover; @ for the abstract namespace (default: @xdpcache-LISTEN-PORT-UDPPORT)")
	fl.StringVar(&f.afterHandover, "after-handover", "exit", "what serve does once a serve --takeover has taken over: exit (0), or wait for a signal (for supervisors that restart a container that exits)")
	return cmd
}

func runServe(ctx context.Context, f serveFlags) error {
	// SIGHUP starts a successor (below); caught from the start, so that one sent while serve
	// starts up waits for it instead of killing it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log, err := newLogger(f.logLevel, f.logFmt)
	if err != nil {
		return err
	}
	defer log.Sync()
	maxItem, err := parseSize(f.maxItemSize)
	if err != nil {
		return fmt.Errorf("--max-item-size: %w", err)
	}
	if f.markDSCP > 63 {
		return fmt.Errorf("--mark-kernel-replies %d: a DSCP is 0 to 63", f.markDSCP)
	}
	if f.port == 0 && f.udpPort == 0 {
		return errors.New("both --port and --udp-port are 0: nothing to serve")
	}

	allow, err := parsePrefixes(f.allowSources)
	if err != nil {
		return fmt.Errorf("--allow-sources: %w", err)
	}
	if f.maxAmp != 0 && f.maxAmp < 1 {
		return fmt.Errorf("--max-amplification %v: want 0 (off) or at least 1", f.maxAmp)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if f.afterHandover != "exit" && f.afterHandover != "wait" {
		return fmt.Errorf("--after-handover %q: want exit or wait", f.afterHandover)
	}
	var kernel server.KernelCache
	var kc *bpf.Cache
	xlog := log.With(zap.String("component", "xdp"))
	if f.xdpIface != "" {
		kc, err = loadKernelPath(f, allow, xlog)
		if err == nil && !f.takeover {
			err = attachKernelPath(kc, f, xlog)
			if err != nil {
				kc.Close()
			}
		}
		if err != nil {
			if f.takeover {
				// The running server keeps its kernel path; taking over without one would lose it.
				return fmt.Errorf("kernel path: %w (the running server, if any, serves on)", err)
			}
			log.Error("kernel path off: the server runs without it", zap.Error(err))
			kc = nil
		} else {
			defer kc.Close()
			reg.MustRegister(kc.Collector())
			kernel = kc
		}
	}
	if kernel == nil {
		// xdpcache_kernel_attached 0: an alert on it fires whether the attach failed or the
		// kernel path was never configured.
		reg.MustRegister(bpf.OffCollector(f.xdpIface))
	}

	srv, err := server.New(server.Config{
		MemoryLimit:     f.memoryMiB << 20,
		MaxItemSize:     maxItem,
		ConnLimit:       f.connLimit,
		Kernel:          kernel,
		KernelReplyDSCP: f.markDSCP,
		Registry:        reg,
		Version:         "xdpcache-" + version,

		UDPReaders:          f.udpReaders,
		Upstreams:           f.upstreams,
		KernelMaxAge:        f.kernelMaxAge,
		UpstreamDialTimeout: f.upstreamDial,
		UpstreamTimeout:     f.upstreamTimeout,

		AllowSources:     allow,
		RatePerSource:    f.ratePerSource,
		Burst:            f.burst,
		MaxAmplification: f.maxAmp,
		IdleTimeout:      f.idleTimeout,
		WriteTimeout:     f.writeTimeout,
	})
	if err != nil {
		return fmt.Errorf("start server: %w", err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { srv.Maintain(gctx, time.Second); return nil })
	ident := takeover.Identity{Listen: f.listen, TCPPort: f.port, UDPPort: f.udpPort, XDPIface: f.xdpIface, MetricsAddr: f.metricsAddr}
	control := f.controlSocket
	if control == "" {
		control = fmt.Sprintf("@xdpcache-%s-%d-%d", f.listen, f.port, f.udpPort)
	}
	var taken *takeover.Taken
	if f.takeover {
		taken, err = takeOver(ctx, control, ident, srv, kc, f, g, log, xlog)
		if err != nil {
			return err
		}
	}
	if taken == nil && f.port != 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(f.listen, strconv.Itoa(f.port)))
		if err != nil {
			return fmt.Errorf("listen tcp: %w", err)
		}
		log.Info("serving TCP", zap.Stringer("addr", ln.Addr()))
		g.Go(func() error { return srv.ServeTCP(ln) })
	}
	if taken == nil && f.udpPort != 0 {
		ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(f.listen, strconv.Itoa(f.udpPort)))
		if err != nil {
			return fmt.Errorf("resolve udp address: %w", err)
		}
		uc, err := net.ListenUDP("udp", ua)
		if err != nil {
			return fmt.Errorf("listen udp: %w", err)
		}
		log.Info("serving UDP", zap.Stringer("addr", uc.LocalAddr()))
		g.Go(func() error { return srv.ServeUDP(uc) })
	}
	var checks health.Checks
	checks.Set("serving", servingCheck(srv, f.port != 0, f.udpPort != 0))
	if f.xdpIface != "" {
		checks.Set("kernel", kernelCheck(kc, f.xdpIface))
	}
	var metrics *http.Server
	var metricsLn net.Listener
	if f.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
		checks.Register(mux)
		metrics = &http.Server{Addr: f.metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		var ln net.Listener
		if taken != nil && taken.Metrics != nil {
			ln = taken.Metrics
		} else if ln, err = net.Listen("tcp", f.metricsAddr); err != nil {
			return fmt.Errorf("listen for metrics: %w", err)
		}
		metricsLn = ln
		log.Info("serving metrics and probes", zap.String("url", "http://"+ln.Addr().String()+"/metrics"),
			zap.String("ready", "http://"+ln.Addr().String()+"/readyz"))
		g.Go(func() error {
			if err := metrics.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics server: %w", err)
			}
			return nil
		})
	}
	if _, err := health.Notify("READY=1"); err != nil {
		log.Warn("could not tell the service manager serve is up", zap.Error(err))
	}
	// Hand over to a serve --takeover, on request or after SIGHUP starts one.
	handedOver := make(chan struct{})
	var handed *takeover.Handed
	giver := takeover.Giver{Server: srv, Kernel: kc, Identity: ident}
	if metricsLn != nil {
		giver.Metrics = metricsLn
	}
	tl, err := listenControl(gctx, control, taken != nil)
	if err != nil {
		return err
	}
	successor := newSuccessors(log)
	g.Go(func() error {
		defer close(handedOver)
		defer tl.Close()
		h, err := tl.Serve(gctx, giver, func(err error) {
			log.Error("takeover failed: still serving", zap.Error(err))
		})
		if err != nil {
			return nil // shutting down
		}
		handed = h
		log.Info("handed over: the new process serves", zap.Int("pid", h.To), zap.Int("items", h.Items),
			zap.Int("kernel_keys", h.Kernel), zap.Int("connections", h.Conns))
		if successor.spawned(h.To) {
			if _, err := health.Notify(fmt.Sprintf("MAINPID=%d", h.To)); err != nil {
				log.Warn("could not tell the service manager the new main process", zap.Error(err))
			}
		}
		return errHandedOver
	})
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-hup:
				successor.start(f.takeover)
			}
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		<-handedOver // a takeover in progress completes or is undone first
		if handed != nil {
			log.Info("handed over: closing what is left")
		} else {
			log.Info("shutting down: finishing in-flight requests", zap.Duration("timeout", f.shutdownTimeout))
		}
		sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
		defer cancel()
		if metrics != nil {
			metrics.Shutdown(sctx)
		}
		return srv.Shutdown(sctx)
	})
	err = g.Wait()
	if errors.Is(err, errHandedOver) {
		err = nil
		if kc != nil {
			// Closing our descriptors leaves the links to the new process.
			kc.Close()
		}
		if f.afterHandover == "wait" {
			log.Info("handed over: waiting for a signal to exit")
			<-ctx.Done()
		}
	}
	log.Info("stopped")
	return err
}

// errHandedOver ends serve's goroutines once a successor has taken over.
var errHandedOver = errors.New("handed over")

// servingCheck is ready while srv serves every transport asked for (tcp, udp).
func servingCheck(srv *server.Server, tcp, udp bool) func() error {
	return func() error {
		nt, nu := srv.Serving()
		switch {
		case tcp && nt == 0 && udp && nu == 0:
			return errors.New("not serving TCP or UDP")
		case tcp && nt == 0:
			return errors.New("not serving TCP")
		case udp && nu == 0:
			return errors.New("not serving UDP")
		}
		return nil
	}
}

// kernelCheck is ready while the kernel path is attached to iface. It fails for good when the
// load or attach failed: serve runs on without the kernel path, but not as configured.
func kernelCheck(kc *bpf.Cache, iface string) func() error {
	return func() error {
		if kc == nil {
			return fmt.Errorf("kernel path off: not attached to %s (the log says why)", iface)
		}
		if got, _ := kc.Attached(); got != iface {
			return fmt.Errorf("kernel path not attached to %s", iface)
		}
		return nil
	}
}

// loadKernelPath loads the XDP and TC programs and their maps, not attached yet.
func loadKernelPath(f serveFlags, allow []netip.Prefix, log *zap.Logger) (*bpf.Cache, error) {
	if f.udpPort == 0 {
		return nil, errors.New("--xdp-iface needs UDP (--udp-port is 0)")
	}
	iface, err := net.InterfaceByName(f.xdpIface)
	if err != nil {
		return nil, fmt.Errorf("--xdp-iface %s: %w", f.xdpIface, err)
	}
	switch bpf.Mode(f.xdpMode) {
	case bpf.Mode("auto"), bpf.Mode("native"), bpf.Mode("generic"):
	default:
		return nil, fmt.Errorf("--xdp-mode %q: want auto, native or generic", f.xdpMode)
	}
	kc, err := bpf.New(bpf.Options{
		Port:       uint16(f.udpPort),
		MaxBytes:   f.kernelCacheMiB << 20,
		MaxEntries: f.kernelEntries,
		ReplyDSCP:  f.markDSCP,
		Admission:  f.admission,
		MTU:        replyMTU(iface.MTU),

		AllowSources:     allow,
		RatePerSource:    f.ratePerSource,
		Burst:            f.burst,
		MaxAmplification: kernelAmplification(f.maxAmp),
	})
	if err != nil {
		return nil, fmt.Errorf("load XDP program: %w", err)
	}
	// Per-program run time and count for xdpcache_kernel_program_*; needs CAP_SYS_ADMIN, or
	// kernel.bpf_stats_enabled=1 set by the operator.
	if err := kc.EnableRunStats(); err != nil {
		log.Info("kernel program run-time statistics off (set sysctl kernel.bpf_stats_enabled=1 to have them)", zap.Error(err))
	}
	return kc, nil
}

// attachKernelPath attaches the loaded programs to --xdp-iface, saying loudly when auto falls
// back to generic mode, where every packet pays for an skb first and most of the gain is lost.
func attachKernelPath(kc *bpf.Cache, f serveFlags, log *zap.Logger) error {
	iface, err := net.InterfaceByName(f.xdpIface)
	if err != nil {
		return fmt.Errorf("--xdp-iface %s: %w", f.xdpIface, err)
	}
	mode := bpf.Mode(f.xdpMode)
	got, err := kc.Attach(f.xdpIface, mode)
	if err != nil {
		return fmt.Errorf("attach XDP program to %s: %w", f.xdpIface, err)
	}
	if mode == bpf.Mode("auto") && got != bpf.Mode("native") {
		log.Warn("native XDP unavailable on this interface: FELL BACK TO GENERIC MODE, expect far less gain",
			zap.String("iface", f.xdpIface))
	}
	if !listenCoversIface(f.listen, iface) {
		log.Warn("the kernel answers UDP GET hits on every address of the interface, but the server "+
			"does not listen there: misses and writes from that interface will get no answer "+
			"(set --listen to the interface's address or 0.0.0.0)",
			zap.String("iface", f.xdpIface), zap.String("listen", f.listen))
	}
	log.Info("kernel path on", zap.String("iface", f.xdpIface), zap.String("mode", string(got)),
		zap.Int("mtu", iface.MTU), zap.String("admission", f.admission), zap.Uint8("reply_dscp", f.markDSCP))
	return nil
}

// listenCoversIface reports whether a server listening on listen receives what arrives at one of
// iface's addresses: the wildcard does, and so does one of the interface's own addresses.
func listenCoversIface(listen string, iface *net.Interface) bool {
	ip, err := netip.ParseAddr(listen)
	if err != nil {
		return true // a host name: cannot tell, do not warn
	}
	if ip.IsUnspecified() {
		return true
	}
	addrs, err := iface.Addrs()
	if err != nil {
		return true
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip.Unmap() {
				return true
			}
		}
	}
	return false
}

// replyMTU is the MTU the kernel sizes replies by. lo's is 65536, more than an IP packet can
// carry; replies are capped at memcached's 1400-byte datagram anyway, so any larger MTU is moot.
func replyMTU(ifaceMTU int) int { return min(ifaceMTU, 65535) }

// kernelAmplification maps the flag to the kernel's option, where 0 means the default: "off"
// becomes a cap no reply can reach (the largest reply is one 1400-byte datagram, the smallest
// request 9 bytes).
func kernelAmplification(flag float64) float64 {
	if flag == 0 {
		return 1e6
	}
	return flag
}

// parsePrefixes reads CIDRs; a bare address is a single host. No flag at all gives nil, which
// both paths read as "loopback and my own subnets".
func parsePrefixes(cidrs []string) ([]netip.Prefix, error) {
	if len(cidrs) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		c = strings.TrimSpace(c)
		p, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR or an address", c)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// parseSize reads memcached-style sizes: plain bytes, or k/m suffixes (powers of 1024).
func parseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size (examples: 1m, 512k, 2048)", s)
	}
	return n * mult, nil
}
