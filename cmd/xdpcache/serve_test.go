package main

import (
	"net"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1m": 1 << 20, "512k": 512 << 10, "2048": 2048, " 2M ": 2 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "m", "-1m", "0", "1g", "1.5m"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted a bad size", bad)
		}
	}
}

func TestReplyMTU(t *testing.T) {
	// lo reports 65536, which the kernel cache must not be handed as is.
	for in, want := range map[int]int{1500: 1500, 9000: 9000, 65536: 65535} {
		if got := replyMTU(in); got != want {
			t.Errorf("replyMTU(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := parsePrefixes([]string{"10.1.2.3/8", " 2001:db8::1 ", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "2001:db8::1/128", "192.0.2.7/32"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("prefix %d = %s, want %s", i, got[i], want[i])
		}
	}
	if p, err := parsePrefixes(nil); p != nil || err != nil {
		t.Errorf("no flag: %v, %v; want nil (each path's own default)", p, err)
	}
	if _, err := parsePrefixes([]string{"10.0.0.0/33"}); err == nil {
		t.Error("accepted an impossible prefix")
	}
}

func TestKernelAmplificationOff(t *testing.T) {
	// The kernel reads 0 as its default cap, so "off" must become a cap no reply reaches.
	if got := kernelAmplification(0); got < 1400/9 {
		t.Errorf("off maps to %v, which a 1400-byte reply to a 9-byte request could exceed", got)
	}
	if got := kernelAmplification(32); got != 32 {
		t.Errorf("kernelAmplification(32) = %v", got)
	}
}

func TestListenCoversIface(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no lo: %v", err)
	}
	for listen, want := range map[string]bool{
		"0.0.0.0": true, "::": true, "127.0.0.1": true, "localhost": true,
		"192.0.2.1": false, // an address lo does not have: the kernel would answer where no server listens
	} {
		if got := listenCoversIface(listen, lo); got != want {
			t.Errorf("listenCoversIface(%q, lo) = %v, want %v", listen, got, want)
		}
	}
}
