//go:build ignore

/* echo.c: the minimal program the cache is measured against. For UDP to cfg_port (IPv4 or IPv6,
 * optionally one VLAN tag) it swaps MACs, addresses and ports and bounces the packet with XDP_TX;
 * everything else passes. It shares the cache's header parsing, so the difference between the two
 * is the cost of the cache itself. */

#include "common.h"
#include "counters.h"
#include "parsing.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

volatile const __u16 cfg_port = 11211; /* UDP port echoed, host order */

static __always_inline int echo(struct xdp_md *ctx)
{
	struct l4_info l4 = {};

	if (parse_udp(ctx, cfg_port, &l4))
		return XDP_PASS;
	if (swap_addrs(ctx, &l4))
		return XDP_PASS;
	return XDP_TX;
}

SEC("xdp")
int xdp_echo(struct xdp_md *ctx)
{
	return echo(ctx);
}

#ifdef XDPCACHE_BENCH
#include "bench.h"
static __always_inline int no_head_growth(void)
{
	return 0;
}

BENCH_PROGRAM(xdp_echo_bench, echo, no_head_growth)
#endif
