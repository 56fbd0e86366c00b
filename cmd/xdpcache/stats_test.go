package main

import (
	"strings"
	"testing"
	"time"
)

func TestFormatRatesSplitsKernelAndUser(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	prev := statsSample{at: t0, fields: map[string]string{
		"cmd_get": "100", "get_hits": "80", "kernel_get_hits": "50", "get_misses": "20", "cmd_set": "0"}}
	cur := statsSample{at: t0.Add(2 * time.Second), fields: map[string]string{
		"cmd_get": "2100", "get_hits": "1880", "kernel_get_hits": "1250", "get_misses": "220",
		"cmd_set": "200", "curr_connections": "3"}}
	line := formatRates(prev, cur)
	// 2000 gets in 2 s: 1000/s, of which kernel 600/s, user hits 300/s, misses 100/s, sets 100/s.
	for _, want := range []string{" 1000 ", " 600 ", " 300 ", " 100 ", "90.0%", "60.0%", "12:00:02"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
}
