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

/* swap_addrs exchanges source and destination MACs, IP addresses and UDP ports in place. The
 * sums of the IP and UDP headers do not change under a swap. Returns 0, or -1 when the headers are
 * no longer within the packet. */
static __always_inline int swap_addrs(struct xdp_md *ctx, const struct l4_info *l4)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u32 d0, s0;
	__u16 d1, s1;
	__be16 port;

	if ((void *)(eth + 1) > data_end)
		return -1;
	/* Two loads and two stores per address, where a memcpy of 6 bytes is six of each. */
	d0 = *(__u32 *)eth->h_dest;
	d1 = *(__u16 *)(eth->h_dest + 4);
	s0 = *(__u32 *)eth->h_source;
	s1 = *(__u16 *)(eth->h_source + 4);
	*(__u32 *)eth->h_dest = s0;
	*(__u16 *)(eth->h_dest + 4) = s1;
	*(__u32 *)eth->h_source = d0;
	*(__u16 *)(eth->h_source + 4) = d1;

	if (l4->ipv6) {
		struct ipv6hdr *ip6 = data + (l4->l3_off & 0xff);
		struct in6_addr a;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
	} else {
		struct iphdr *ip = data + (l4->l3_off & 0xff);
		__be32 a;

		if ((void *)(ip + 1) > data_end)
			return -1;
		a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
	}
	udp = data + (l4->l4_off & 0xff);
	if ((void *)(udp + 1) > data_end)
		return -1;
	port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	return 0;
}

static __always_inline int echo(struct xdp_md *ctx)
{
	struct l4_info l4 = {};

	if (parse_udp((void *)(long)ctx->data, (void *)(long)ctx->data_end, cfg_port, &l4))
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
