package main

import "testing"

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
