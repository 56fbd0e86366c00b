package bpf

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestOffCollector: a server without the kernel path still exports xdpcache_kernel_attached, as
// 0 with the interface it was asked for, so an alert on 0 fires when the attach failed.
func TestOffCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(OffCollector("eth9")); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP xdpcache_kernel_attached 1 while the XDP program is attached to iface in mode (native or generic), else 0.
# TYPE xdpcache_kernel_attached gauge
xdpcache_kernel_attached{iface="eth9",mode=""} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "xdpcache_kernel_attached"); err != nil {
		t.Fatal(err)
	}
}
