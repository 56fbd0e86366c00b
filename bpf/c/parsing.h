/* parsing.h: bounds-checked parsing of Ethernet, one 802.1Q tag, IPv4 and IPv6 up to UDP.
 *
 * Every header is checked against data_end before it is read (xdp-tutorial's cursor style), and
 * anything this project does not fully understand (IPv4 options, fragments, IPv6 extension headers,
 * stacked VLAN tags, lengths that disagree) is reported as a pass reason so the caller returns
 * XDP_PASS with the packet untouched. The result records offsets, not pointers, because the
 * caller may resize the packet and must re-derive pointers afterwards.
 */
#pragma once

#include "common.h"
#include "counters.h"

struct l4_info {
	__u32 l3_off;      /* offset of the IP header from data */
	__u32 l4_off;      /* offset of the UDP header from data */
	__u32 payload_len; /* UDP payload bytes, from the UDP length field */
	__u8 ipv6;         /* 1 for IPv6, 0 for IPv4 */
};

/* parse_udp finds the UDP header of an IPv4 or IPv6 packet (data to data_end, from the Ethernet
 * header on: an XDP frame, or an skb at TC ingress) to port (host order). It returns 0 or a pass
 * reason. */
static __always_inline int parse_udp(void *data, void *data_end, __u16 port, struct l4_info *out)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u32 ip_end;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return PASS_NOT_IP_UDP;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = data + off;

		if ((void *)(tag + 1) > data_end)
			return PASS_MALFORMED;
		proto = tag->proto;
		off += sizeof(*tag);
		if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
			return PASS_NOT_IP_UDP; /* stacked tags: not ours to rewrite */
	}
	out->l3_off = off;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		__u32 tot;

		if ((void *)(ip + 1) > data_end)
			return PASS_MALFORMED;
		if (ip->version != 4 || ip->ihl < 5)
			return PASS_MALFORMED;
		if (ip->ihl != 5)
			return PASS_IP_OPTIONS;
		if (ip->protocol != IPPROTO_UDP)
			return PASS_NOT_IP_UDP;
		/* MF set or a fragment offset: only whole datagrams are answered. */
		if (ip->frag_off & bpf_htons(0x3FFF))
			return PASS_FRAGMENT;
		tot = bpf_ntohs(ip->tot_len);
		if (tot < sizeof(*ip) + sizeof(struct udphdr))
			return PASS_MALFORMED;
		ip_end = off + tot;
		off += sizeof(*ip);
		out->ipv6 = 0;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return PASS_MALFORMED;
		if (ip6->version != 6)
			return PASS_MALFORMED;
		if (ip6->nexthdr != IPPROTO_UDP)
			return ip6->nexthdr == IPPROTO_TCP ? PASS_NOT_IP_UDP : PASS_IPV6_EXT;
		ip_end = off + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		off += sizeof(*ip6);
		out->ipv6 = 1;
	} else {
		return PASS_NOT_IP_UDP;
	}

	/* The IP length may be shorter than the frame (link padding), never longer. */
	if (data + ip_end > data_end)
		return PASS_MALFORMED;

	struct udphdr *udp = data + off;
	__u32 ulen;

	if ((void *)(udp + 1) > data_end)
		return PASS_MALFORMED;
	if (udp->dest != bpf_htons(port))
		return PASS_WRONG_PORT;
	ulen = bpf_ntohs(udp->len);
	if (ulen != ip_end - off || ulen < sizeof(*udp))
		return PASS_MALFORMED;
	out->l4_off = off;
	out->payload_len = ulen - sizeof(*udp);
	return 0;
}
