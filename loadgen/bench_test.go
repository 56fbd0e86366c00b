package loadgen

import (
	"math/rand/v2"
	"testing"

	"github.com/xdpcache/xdpcache/internal/protocol"
	"github.com/xdpcache/xdpcache/loadgen/workload"
)

// Hot-path benchmarks: what the sender and receiver do per request.

func benchModel(b *testing.B, dist string) *workloadModel {
	b.Helper()
	c := Defaults()
	c.Keys = 10_000_000
	c.KeyDist = dist
	c.KeyScramble = true
	m, err := c.validate()
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func BenchmarkKeyZipf(b *testing.B) {
	z, _ := workload.NewZipf(10_000_000, 0.99)
	r := rand.New(rand.NewPCG(1, 2))
	var s uint64
	for b.Loop() {
		s += z.Next(r)
	}
	_ = s
}

func BenchmarkKeyUniform(b *testing.B) {
	u, _ := workload.NewUniform(10_000_000)
	r := rand.New(rand.NewPCG(1, 2))
	var s uint64
	for b.Loop() {
		s += u.Next(r)
	}
	_ = s
}

func BenchmarkKeyScramble(b *testing.B) {
	sc, _ := workload.NewScrambler(10_000_000, 1)
	var s uint64
	i := uint64(0)
	for b.Loop() {
		s += sc.Map(i % 10_000_000)
		i++
	}
	_ = s
}

// BenchmarkOpNext is a whole request draw: get/set choice, Zipf rank, scrambling.
func BenchmarkOpNext(b *testing.B) {
	g := opGen{m: benchModel(b, "zipf"), getRatio: 0.9, r: rand.New(rand.NewPCG(1, 2))}
	for b.Loop() {
		_ = g.next(0)
	}
}

// BenchmarkEncodeGet is the frame header and "get <16-byte key>" of one UDP request.
func BenchmarkEncodeGet(b *testing.B) {
	m := benchModel(b, "uniform")
	o := op{kind: opGet, key: 1234567}
	buf := make([]byte, 0, 128)
	for b.Loop() {
		buf = protocol.FrameHeader{RequestID: 7, Total: 1}.AppendTo(buf[:0])
		buf = appendRequest(buf, &o, m.space, nil)
	}
}

func BenchmarkEncodeSet32(b *testing.B) {
	m := benchModel(b, "uniform")
	val := newValueSource(32)
	o := op{kind: opSet, key: 1234567, size: 32}
	buf := make([]byte, 0, 128)
	for b.Loop() {
		buf = appendRequest(buf[:0], &o, m.space, val)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	m := newMeasurement()
	v := int64(12_345)
	for b.Loop() {
		m.record(UserHit, v)
		v = v*31%10_000_000 + 1000
	}
}

// BenchmarkReceiveDatagram is the receiver's work for one single-datagram hit: control message
// parsing, frame header, matching, classification with the key check, and recording.
func BenchmarkReceiveDatagram(b *testing.B) {
	cfg := Defaults()
	m, err := cfg.validate()
	if err != nil {
		b.Fatal(err)
	}
	ctl := newControl(&cfg)
	ctl.measureStart.Store(0)
	w := &worker{ctl: ctl, batch: 1, meas: newMeasurement()}
	tr := &udpTransport{w: w, ks: m.space, slots: make([]udpSlot, 1024), mask: 1023}
	key := m.space.Append(nil, 42)
	reply := protocol.AppendValue(nil, string(key), 0, make([]byte, 32), 0, false)
	reply = append(reply, protocol.End...)
	dgram := protocol.FrameHeader{RequestID: 5, Total: 1}.AppendTo(nil)
	dgram = append(dgram, reply...)
	oob := make([]byte, 0, 64)
	oob = append(oob, cmsg(0, 1, []byte{40})...) // IPPROTO_IP, IP_TOS
	tr.rb = &recvBatch{hdrs: make([]mmsghdr, 1), bufs: [][]byte{dgram}, ctrls: [][]byte{oob}}
	tr.rb.hdrs[0].len = uint32(len(dgram))
	tr.rb.hdrs[0].hdr.SetControllen(len(oob))
	for b.Loop() {
		tr.slots[5] = udpSlot{seq: 1, key: 42, kind: opGet, sent: 1}
		tr.pending = 1
		tr.handle(1, 1000)
	}
	if w.cnt.done[UserHit].Load() == 0 {
		b.Fatal("no hit recorded")
	}
}
