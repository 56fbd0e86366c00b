package server

import (
	"strconv"
	"testing"
)

// Per-request cost of the protocol layer alone, without sockets: allocations here are the hot
// path's.
func benchSession(b *testing.B, udp bool, setup, req string) {
	s, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	c := s.getSession(false)
	if _, act := c.process([]byte(setup)); act != actNeedMore {
		b.Fatal("setup did not complete")
	}
	c.reset(udp)
	in := []byte(req)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.out = c.out[:0]
		c.msgEnds = c.msgEnds[:0]
		if n, _ := c.process(in); n != len(in) {
			b.Fatalf("consumed %d of %d", n, len(in))
		}
	}
}

func BenchmarkSessionGet(b *testing.B) {
	benchSession(b, false, "set key:000000000001 0 0 32\r\n"+string(make([]byte, 32))+"\r\n", "get key:000000000001\r\n")
}

func BenchmarkSessionGetMiss(b *testing.B) {
	benchSession(b, false, "", "get key:000000000001\r\n")
}

func BenchmarkSessionSet(b *testing.B) {
	benchSession(b, false, "", "set key:000000000001 0 0 32\r\n"+string(make([]byte, 32))+"\r\n")
}

func BenchmarkHandleDatagramGet(b *testing.B) {
	s, err := New(Config{Kernel: newFakeKernel()})
	if err != nil {
		b.Fatal(err)
	}
	s.HandleDatagram(udpReq(1, "set key:000000000001 0 0 32\r\n"+string(make([]byte, 32))+"\r\n"))
	req := udpReq(1, "get key:000000000001\r\n")
	c := s.getSession(true)
	var dst [][]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst = s.handleDatagram(c, req, dst[:0])
		if len(dst) != 1 {
			b.Fatal("no reply " + strconv.Itoa(len(dst)))
		}
	}
}
