package bpf

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/server"
)

// TestDifferentialServer drives the Go server with the kernel cache in front of it, as on the
// wire: every datagram first meets the program; what it passes goes to the server, which offers
// its UDP hits back to the kernel cache and invalidates on every write. Each kernel reply must be
// byte-identical to the server's reply to the same datagram. Writes are interleaved, so a stale
// kernel value would show up as a difference.
func TestDifferentialServer(t *testing.T) {
	c := newTestCache(t, Options{MaxEntries: 64, MaxBytes: 64 * 1600})
	// Runs here are sequential, so no program run can overlap a deferred delete; retiring at
	// once keeps thousands of rewrites within the small test maps.
	c.retireAfter = 0
	srv, err := server.New(server.Config{Kernel: c})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]string, 48)
	for i := range keys {
		keys[i] = fmt.Sprintf("key:%d:%s", i, strings.Repeat("x", rng.IntN(40)))
	}
	keys[0] = strings.Repeat("L", 250)
	value := func() string {
		n := rng.IntN(200)
		switch rng.IntN(10) {
		case 0:
			if rng.IntN(3) == 0 {
				n = 900 + rng.IntN(600) // around and over one datagram
			}
		case 1:
			return fmt.Sprint(rng.IntN(100000)) // numeric, for incr/decr
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		return string(b)
	}
	pick := func() string { return keys[rng.IntN(len(keys))] }
	send := func(rid uint16, cmd string) [][]byte {
		return srv.HandleDatagram(append(protocol.FrameHeader{RequestID: rid, Total: 1}.AppendTo(nil), cmd...))
	}
	for i, k := range keys {
		send(uint16(i), fmt.Sprintf("set %s %d 0 %d\r\n%s\r\n", k, i, 3, "abc"))
	}

	var kernelAnswers, metaAnswers, base64Answers, passes, writes int
	const rounds = 6000
	for i := 0; i < rounds; i++ {
		rid := uint16(rng.Uint32())
		var cmd string
		switch r := rng.IntN(100); {
		case r < 30:
			cmd = metaGet(rng, pick())
		case r < 85:
			verb := "get"
			if rng.IntN(4) == 0 {
				verb = "gets"
			}
			ks := make([]string, 1+rng.IntN(3)*rng.IntN(2))
			for j := range ks {
				ks[j] = pick()
			}
			cmd = keysCommand(verb, ks...)
		case r < 91:
			v := value()
			cmd = fmt.Sprintf("set %s %d 0 %d\r\n%s\r\n", pick(), rng.Uint32(), len(v), v)
		case r < 92:
			cmd = fmt.Sprintf("delete %s\r\n", pick())
		case r < 94:
			cmd = fmt.Sprintf("append %s 0 0 2\r\nzz\r\n", pick())
		case r < 95:
			cmd = fmt.Sprintf("prepend %s 0 0 1\r\ny\r\n", pick())
		case r < 96:
			cmd = fmt.Sprintf("incr %s 3\r\n", pick())
		case r < 97:
			cmd = fmt.Sprintf("touch %s 0\r\n", pick())
		case r < 98 && rng.IntN(5) == 0:
			cmd = "flush_all\r\n"
		case r < 98 && rng.IntN(2) == 0:
			// Meta-protocol state mg replies show: a stale mark (X, W), a vivified item (Z).
			if rng.IntN(2) == 0 {
				cmd = fmt.Sprintf("md %s I\r\n", pick())
			} else {
				cmd = fmt.Sprintf("mg %s N30 v\r\n", pick())
			}
		case r < 98:
			v := value()
			cmd = fmt.Sprintf("set %s %d 1000 %d\r\n%s\r\n", pick(), rng.Uint32(), len(v), v) // expires
		default:
			v := value()
			cmd = fmt.Sprintf("add %s 1 0 %d\r\n%s\r\n", pick(), len(v), v)
		}
		req := request(cmd)
		req.Payload[0], req.Payload[1] = byte(rid>>8), byte(rid)
		frame := req.Bytes()
		verdict, out := run(t, c.Program(), frame)
		switch verdict {
		case xdpTX:
			kernelAnswers++
			if strings.HasPrefix(cmd, "mg ") {
				metaAnswers++
				if slices.Contains(strings.Fields(cmd), "b") {
					base64Answers++
				}
			}
			got := checkReply(t, req, out, nil) // payload compared below
			want := srv.HandleDatagram(req.Payload)
			if len(want) != 1 || !bytes.Equal(got.Payload, want[0]) {
				t.Fatalf("round %d %q:\nkernel %q\nserver %q", i, cmd, got.Payload, want)
			}
		case xdpPass:
			passes++
			if !bytes.Equal(out, frame) {
				t.Fatalf("round %d %q: passed but changed", i, cmd)
			}
			if !strings.HasPrefix(cmd, "get") && !strings.HasPrefix(cmd, "mg") {
				writes++
			}
			send(rid, cmd)
		default:
			t.Fatalf("round %d: verdict %d", i, verdict)
		}
	}
	t.Logf("%d rounds: %d answered by the kernel (identical to the server; %d mg, %d of them b), %d passed (%d writes)",
		rounds, kernelAnswers, metaAnswers, base64Answers, passes, writes)
	pc, _ := c.PassCounts()
	t.Logf("passes by reason: %v", pc)
	if kernelAnswers < rounds/10 || metaAnswers < rounds/50 || base64Answers < rounds/500 {
		t.Fatalf("only %d of %d requests (%d mg, %d with base64 keys) answered in the kernel: the comparison is too thin",
			kernelAnswers, rounds, metaAnswers, base64Answers)
	}
}

// metaGet is a random mg of key: the flags clients read with, in random order, now and then one
// the kernel leaves to the server, a flag twice, or a flag with a stray argument.
func metaGet(rng *rand.Rand, key string) string {
	flags := []string{"v", "f", "t", "c", "k", "s", "q", "O" + strings.Repeat("x", rng.IntN(31)) + "1"}
	rng.Shuffle(len(flags), func(i, j int) { flags[i], flags[j] = flags[j], flags[i] })
	flags = flags[:rng.IntN(len(flags)+1)]
	switch rng.IntN(12) {
	case 0:
		flags = append(flags, []string{"h", "l", "u", "E5", "T30"}[rng.IntN(5)])
	case 1:
		if len(flags) > 0 {
			flags = append(flags, flags[0])
		}
	case 2:
		flags = append(flags, "kk")
	}
	if rng.IntN(4) == 0 {
		// The key in base64 (b), now and then in a non-canonical spelling the server decodes
		// too but would not write back (nonzero bits after the last byte).
		enc := base64.StdEncoding.EncodeToString([]byte(key))
		if rng.IntN(4) == 0 && strings.HasSuffix(enc, "=") {
			p := strings.IndexByte(enc, '=') - 1
			enc = enc[:p] + string("BCDFGH"[rng.IntN(6)]) + enc[p+1:]
		}
		key = enc
		flags = append(flags, "b")
		rng.Shuffle(len(flags), func(i, j int) { flags[i], flags[j] = flags[j], flags[i] })
	}
	cmd := "mg " + key
	for _, f := range flags {
		cmd += " " + f
	}
	return cmd + "\r\n"
}
