package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/xdpcache/xdpcache/server"
)

// Invariants 1 and 2 checked as linearizability: concurrent clients mix UDP gets (answered by the
// kernel or the server), TCP sets, deletes, incrs, cas and gets on a few keys, every operation is
// timed from call to return, and porcupine looks for an order of the operations, consistent with
// real time, in which a plain memcached would have given every reply seen. A stale kernel copy
// after an acknowledged write, or a torn value, has no such order.

type opKind uint8

const (
	opGet opKind = iota // UDP get (a multi-key get is split into one op per key: same interval)
	opGets
	opSet
	opDelete
	opIncr
	opCas
)

var opNames = [...]string{"get", "gets", "set", "delete", "incr", "cas"}

type linInput struct {
	kind  opKind
	key   string
	value string // set, cas
	delta uint64 // incr
	token uint64 // cas
	udp   bool   // a read sent over UDP
}

type linOutput struct {
	status string    // mutations: STORED, EXISTS, NOT_FOUND, DELETED, or the new value of an incr
	get    getResult // reads
	kernel bool      // a UDP read the kernel answered (its mark was on the reply)
}

// linState is one key's state in a sequential memcached. cas 0 means the key's CAS unique has
// not been observed since the last write: it is fresh, so no token a client holds can match it,
// and when first seen it must be above seen, the highest unique observed before (the store hands
// them out in increasing order), so an old version's unique served for a new value is caught.
type linState struct {
	present bool
	value   string
	cas     uint64
	seen    uint64
}

var linModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(linInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return linState{} },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(linState), in.(linInput), out.(linOutput)
		switch i.kind {
		case opGet, opGets:
			if !s.present {
				return !o.get.found, s
			}
			if !o.get.found || o.get.value != s.value {
				return false, s
			}
			if i.kind == opGets {
				if s.cas != 0 && o.get.cas != s.cas || s.cas == 0 && o.get.cas <= s.seen {
					return false, s
				}
				s.cas, s.seen = o.get.cas, o.get.cas
			}
			return true, s
		case opSet:
			return o.status == "STORED", linState{present: true, value: i.value, seen: s.seen}
		case opDelete:
			if s.present {
				return o.status == "DELETED", linState{seen: s.seen}
			}
			return o.status == "NOT_FOUND", s
		case opIncr:
			if !s.present {
				return o.status == "NOT_FOUND", s
			}
			n, err := strconv.ParseUint(s.value, 10, 64)
			if err != nil {
				return false, s
			}
			v := strconv.FormatUint(n+i.delta, 10)
			return o.status == v, linState{present: true, value: v, seen: s.seen}
		case opCas:
			switch {
			case !s.present:
				return o.status == "NOT_FOUND", s
			case s.cas != 0 && s.cas == i.token:
				return o.status == "STORED", linState{present: true, value: i.value, seen: s.seen}
			default:
				return o.status == "EXISTS", s
			}
		}
		return false, s
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(linInput), out.(linOutput)
		switch i.kind {
		case opGet, opGets:
			via := "tcp"
			if i.udp {
				via = "udp"
				if o.kernel {
					via = "kernel"
				}
			}
			if !o.get.found {
				return fmt.Sprintf("%s(%s) via %s -> miss", opNames[i.kind], i.key, via)
			}
			return fmt.Sprintf("%s(%s) via %s -> %q cas %d", opNames[i.kind], i.key, via, o.get.value, o.get.cas)
		case opCas:
			return fmt.Sprintf("cas(%s, %q, %d) -> %s", i.key, i.value, i.token, o.status)
		case opIncr:
			return fmt.Sprintf("incr(%s, %d) -> %s", i.key, i.delta, o.status)
		}
		return fmt.Sprintf("%s(%s, %q) -> %s", opNames[i.kind], i.key, i.value, o.status)
	},
	DescribeState: func(st any) string {
		s := st.(linState)
		if !s.present {
			return "absent"
		}
		return fmt.Sprintf("%q cas %d", s.value, s.cas)
	},
}

// linStats summarise a recorded history.
type linStats struct {
	ops, kernelReads, udpReads, tcpOps, udpTimeouts, kernelMetaReads int
}

// recordHistory runs the workload against the rig until ops operations are recorded or limit
// passes, and returns the history. Lost UDP requests leave no operation: a read that never
// returned has no effect, so dropping it is sound.
func recordHistory(t *testing.T, r *rig, ops int, limit time.Duration) ([]porcupine.Operation, linStats) {
	t.Helper()
	const (
		udpClients = 5
		tcpClients = 3
	)
	keys := make([]string, 8)
	for i := range keys {
		keys[i] = fmt.Sprintf("lin:%d", i)
	}
	// The last two keys hold values of about 1000 bytes, whose replies the XDP frame has no room
	// for: the TC program answers their kernel reads. They are never incremented.
	large := func(k string) bool { return k == keys[6] || k == keys[7] }
	newValue := func(rng *rand.Rand, k string) string {
		v := strconv.Itoa(rng.IntN(1_000_000))
		if large(k) {
			v += "-" + strings.Repeat("v", 1000)
		}
		return v
	}
	start := time.Now()
	deadline := start.Add(limit)
	now := func() int64 { return int64(time.Since(start)) }

	var (
		mu      sync.Mutex
		history = make([]porcupine.Operation, 0, ops+64)
		st      linStats
		count   atomic.Int64
		wg      sync.WaitGroup
		errc    = make(chan error, udpClients+tcpClients)
	)
	record := func(local []porcupine.Operation, s linStats) {
		mu.Lock()
		history = append(history, local...)
		st.kernelReads += s.kernelReads
		st.udpReads += s.udpReads
		st.tcpOps += s.tcpOps
		st.udpTimeouts += s.udpTimeouts
		st.kernelMetaReads += s.kernelMetaReads
		mu.Unlock()
	}
	more := func(n int) bool {
		return count.Add(int64(n)) <= int64(ops) && time.Now().Before(deadline)
	}
	// udpRead sends one get or gets of ks and appends one operation per key. A gets of one key is
	// sent as "mg <key> v c" every other time: the same read, answered on the mg path.
	udpRead := func(g *udpGetter, id int, kind opKind, ks []string, local []porcupine.Operation, s *linStats) ([]porcupine.Operation, error) {
		cmd := "get "
		if kind == opGets {
			cmd = "gets "
		}
		meta := kind == opGets && len(ks) == 1 && g.id%2 == 0
		req := cmd + strings.Join(ks, " ") + "\r\n"
		if meta {
			req = "mg " + ks[0] + " v c\r\n"
		}
		call := now()
		reply, kernel, err := g.do(req)
		ret := now()
		if err == errUDPTimeout {
			s.udpTimeouts++
			return local, nil
		}
		if err != nil {
			return local, err
		}
		var res []getResult
		if meta {
			res, err = parseMetaGetReply(reply)
		} else {
			res, err = parseGetReply(reply, ks)
		}
		if err != nil {
			return local, err
		}
		s.udpReads++
		if kernel {
			s.kernelReads++
			if meta {
				s.kernelMetaReads++
			}
		}
		for j, k := range ks {
			local = append(local, porcupine.Operation{ClientId: id,
				Input:  linInput{kind: kind, key: k, udp: true},
				Output: linOutput{get: res[j], kernel: kernel}, Call: call, Return: ret})
		}
		return local, nil
	}

	// Closed on return, so that repeated histories (the soak test) do not pile up connections.
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for c := 0; c < udpClients; c++ {
		g := r.udpGetter(t, 250*time.Millisecond)
		closers = append(closers, g.conn.Close)
		rng := rand.New(rand.NewPCG(uint64(c), 1))
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			var local []porcupine.Operation
			var s linStats
			defer func() { record(local, s) }()
			for more(1) {
				kind, ks := opGet, []string{keys[rng.IntN(len(keys))]}
				switch p := rng.IntN(10); {
				case p < 3:
					kind = opGets
				case p < 5:
					if k2 := keys[rng.IntN(len(keys))]; k2 != ks[0] {
						ks = append(ks, k2)
					}
				}
				var err error
				if local, err = udpRead(g, id, kind, ks, local, &s); err != nil {
					errc <- fmt.Errorf("udp client %d: %w", id, err)
					return
				}
			}
		}(c)
	}
	for c := 0; c < tcpClients; c++ {
		tc := r.dialText(t)
		g := r.udpGetter(t, 250*time.Millisecond)
		closers = append(closers, tc.conn.Close, g.conn.Close)
		rng := rand.New(rand.NewPCG(uint64(c), 2))
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			var local []porcupine.Operation
			var s linStats
			defer func() { record(local, s) }()
			tokens := map[string]uint64{}
			for more(1) {
				k := keys[rng.IntN(len(keys))]
				in := linInput{key: k}
				var out linOutput
				var err error
				call := now()
				p := rng.IntN(20)
				if p >= 9 && p < 12 && large(k) {
					p = 0 // a set instead of an incr
				}
				switch {
				case p < 6:
					in.kind, in.value = opSet, newValue(rng, k)
					out.status, err = tc.line(fmt.Sprintf("set %s 0 0 %d\r\n%s\r\n", k, len(in.value), in.value))
				case p < 9:
					in.kind = opDelete
					out.status, err = tc.line("delete " + k + "\r\n")
				case p < 12:
					in.kind, in.delta = opIncr, uint64(1+rng.IntN(100))
					out.status, err = tc.line(fmt.Sprintf("incr %s %d\r\n", k, in.delta))
				case p < 16:
					// A token from this client's last gets of the key, or a made-up one.
					tok, ok := tokens[k]
					if !ok {
						tok = uint64(1 + rng.IntN(1<<20))
					}
					in.kind, in.value, in.token = opCas, newValue(rng, k), tok
					out.status, err = tc.line(fmt.Sprintf("cas %s 0 0 %d %d\r\n%s\r\n", k, len(in.value), tok, in.value))
				case p < 18:
					in.kind = opGets
					out.get, err = tc.gets(k)
					if err == nil && out.get.found {
						tokens[k] = out.get.cas
					}
				default:
					// A gets over UDP, often answered by the kernel, whose unique then feeds a cas.
					n := len(local)
					if local, err = udpRead(g, id, opGets, []string{k}, local, &s); err == nil && len(local) > n {
						if res := local[n].Output.(linOutput).get; res.found {
							tokens[k] = res.cas
						}
					}
					if err != nil {
						errc <- fmt.Errorf("tcp client %d: %w", id, err)
						return
					}
					continue
				}
				ret := now()
				if err != nil {
					errc <- fmt.Errorf("tcp client %d: %s: %w", id, opNames[in.kind], err)
					return
				}
				s.tcpOps++
				local = append(local, porcupine.Operation{ClientId: udpClients + id, Input: in, Output: out, Call: call, Return: ret})
			}
		}(c)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	st.ops = len(history)
	return history, st
}

// checkHistory runs porcupine; on a violation it writes the visualisation next to the test output.
func checkHistory(t *testing.T, h []porcupine.Operation) porcupine.CheckResult {
	t.Helper()
	res, info := porcupine.CheckOperationsVerbose(linModel, h, 45*time.Second)
	if res == porcupine.Illegal {
		path := filepath.Join(os.TempDir(), "xdpcache-"+strings.ReplaceAll(t.Name(), "/", "_")+".html")
		if err := porcupine.VisualizePath(linModel, info, path); err == nil {
			t.Logf("history visualisation: %s", path)
		}
	}
	return res
}

// linOps is the history length; XDPCACHE_LIN_OPS raises it for longer runs.
func linOps(t *testing.T, def int) int {
	if v := os.Getenv("XDPCACHE_LIN_OPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("XDPCACHE_LIN_OPS=%q: want a positive count", v)
		}
		return n
	}
	return def
}

func TestLinearizable(t *testing.T) {
	r := newRig(t, "always")
	want := linOps(t, 100_000)
	h, st := recordHistory(t, r, want, 50*time.Second)
	t.Logf("%d operations: %d UDP reads (%d answered by the kernel, %d of them mg, %d lost), %d TCP operations",
		st.ops, st.udpReads, st.kernelReads, st.kernelMetaReads, st.udpTimeouts, st.tcpOps)
	// Lost UDP requests are dropped from the history; a handful are tolerable, not a tenth.
	if st.ops < want*9/10 {
		t.Fatalf("recorded %d operations, want at least %d (the time limit hit first)", st.ops, want*9/10)
	}
	// Without kernel answers this would test only the Go server.
	if st.kernelReads < st.udpReads/10 {
		t.Fatalf("the kernel answered %d of %d UDP reads: too few to test the kernel path", st.kernelReads, st.udpReads)
	}
	if st.kernelMetaReads == 0 {
		t.Fatalf("the kernel answered none of the mg reads: the mg path is untested")
	}
	if tc := r.tcHits(t); tc == 0 {
		t.Fatalf("the TC program answered none of the large values' reads: its path is untested")
	}
	begin := time.Now()
	res := checkHistory(t, h)
	t.Logf("porcupine: %s in %v", res, time.Since(begin).Round(time.Millisecond))
	if res != porcupine.Ok {
		t.Fatalf("history of %d operations is %s, want Ok: a read saw a value no linearization allows", len(h), res)
	}
}

// TestLinearizabilityCatchesStaleKernel shows the check can fail: with a kernel cache that
// ignores invalidation, reads answered by the kernel return overwritten values.
func TestLinearizabilityCatchesStaleKernel(t *testing.T) {
	r := newRig(t, "always")
	r.restartServer(t, forgetfulKernel{r.kernel})
	h, st := recordHistory(t, r, 10_000, 20*time.Second)
	t.Logf("%d operations, %d answered by the kernel", st.ops, st.kernelReads)
	if res := checkHistory(t, h); res != porcupine.Illegal {
		t.Fatalf("history over a kernel that never invalidates is %s, want Illegal", res)
	}
}

var _ server.KernelCache = forgetfulKernel{}

// parseMetaGetReply reads the reply to "mg <key> v c": "VA <bytes> c<cas>\r\n<data>\r\n", or
// "EN\r\n" for a miss.
func parseMetaGetReply(reply string) ([]getResult, error) {
	if reply == "EN\r\n" {
		return []getResult{{}}, nil
	}
	hdr, data, ok := strings.Cut(reply, "\r\n")
	f := strings.Fields(hdr)
	if !ok || len(f) != 3 || f[0] != "VA" || !strings.HasPrefix(f[2], "c") {
		return nil, fmt.Errorf("parse mg reply %q: %w", reply, errProtocol)
	}
	n, err1 := strconv.Atoi(f[1])
	cas, err2 := strconv.ParseUint(f[2][1:], 10, 64)
	if err1 != nil || err2 != nil || len(data) != n+2 || !strings.HasSuffix(data, "\r\n") {
		return nil, fmt.Errorf("parse mg reply %q: %w", reply, errProtocol)
	}
	return []getResult{{found: true, value: data[:n], cas: cas}}, nil
}
