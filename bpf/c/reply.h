/* reply.h: the reply's headers and checksums, built from the request's.
 *
 * Addresses, ports and MACs swap; lengths, the optional reply mark (DSCP), the IPv4 header sum and
 * the UDP sum are computed, not updated, so a request with a wrong sum still gets a right reply.
 * The UDP sum adds the pseudo-header and header words to the payload's sum, which the first pass
 * accumulated from each entry's precomputed sums (csum.h).
 */
#pragma once

#include "common.h"
#include "csum.h"
#include "parsing.h"
#include "cache_maps.h"

/* Sum of "END\r\n" as big-endian words from an even offset. */
#define END_CSUM (0x454E + 0x440D + 0x0A00)

/* swap_macs returns the Ethernet addresses held in a (bytes 0-7) and b (bytes 8-11, as loaded
 * little-endian) with source and destination exchanged, in the same two words. */
static __always_inline void swap_macs(__u64 *a, __u32 *b)
{
	__u64 x = *a;
	__u32 y = *b;

	*a = (x >> 48) | ((__u64)y << 16) | (x << 48);
	*b = (__u32)(x >> 16);
}

/* build_headers writes the reply's headers at the packet's front from the request's headers at
 * offset src (0: in place; the head growth when the reply grew at the head, where the request's
 * headers still are): swapped addresses, new lengths, the reply mark, both checksums and the
 * frame header. Every header word is loaded before any is stored, so the two ranges may overlap,
 * and no load reads bytes just stored in another width (which stalls on store forwarding). The
 * sums add the words as loaded (little-endian) and store the result the same way, which gives
 * the right bytes (RFC 1071 2(B)). All bounds are checked before the first store. */
static __always_inline int build_headers(void *data, void *data_end, const struct l4_info *l4, __u32 src,
					 __u32 payload_len, __u64 payload_csum)
{
	__u32 l3 = l4->l3_off, l4o = l4->l4_off, ulen = payload_len + sizeof(struct udphdr);
	__u8 dscp = cfg_reply_dscp;
	__u64 so = src, mac0, frame, le;
	__u8 *s, *d = data;
	__u32 mac1, ports, x, sum_be, ip[10];
	__u16 vlan_or_type, c;
	__u32 vlan_tail = 0;

	if ((l3 != 14 && l3 != 18) || (l4o != l3 + 20 && l4o != l3 + 40) ||
	    (l4->ipv6 != 0) != (l4o == l3 + 40) || !in_range(so, 0, HEAD_GROW_MAX))
		return -1;
	s = data + so;
	/* Ethernet (and VLAN), IP, UDP and the frame header, at the source and at the front. */
	__u8 *sl3 = s + (l3 & 0x1f), *dl3 = d + (l3 & 0x1f);
	__u8 *sl4 = s + (l4o & 0x3f), *dl4 = d + (l4o & 0x3f);

	if ((void *)(s + 18) > data_end || (void *)(d + 18) > data_end ||
	    (void *)(sl4 + 16) > data_end || (void *)(dl4 + 16) > data_end ||
	    (void *)(sl3 + 20) > data_end || (void *)(dl3 + 20) > data_end)
		return -1;
	mac0 = *(__u64 *)s;
	mac1 = *(__u32 *)(s + 8);
	vlan_or_type = *(__u16 *)(s + 12);
	if (l3 == 18)
		vlan_tail = *(__u32 *)(s + 14);
	ports = *(__u32 *)sl4;
	/* Request id kept; seq 0, total 1, reserved 0 (little-endian load: total is bytes 4-5). */
	frame = (*(__u64 *)(sl4 + 8) & 0xffff) | (0x0100ULL << 32);
	/* Pseudo-header protocol and length, and the UDP length word (checksum zero). */
	le = (__u64)ports + bpf_htons(ulen) + bpf_htons(IPPROTO_UDP) + bpf_htons(ulen);
	if (l4->ipv6) {
		if ((void *)(sl3 + 40) > data_end || (void *)(dl3 + 40) > data_end)
			return -1;
#pragma unroll
		for (int i = 0; i < 10; i++)
			ip[i] = *(__u32 *)(sl3 + 4 * i);
#pragma unroll
		for (int i = 2; i < 10; i++)
			le += ip[i];
		if (dscp) {
			/* Traffic class: the low 4 bits of byte 0 and the high 4 of byte 1. */
			__u8 b0 = ip[0], b1 = ip[0] >> 8, tc = (b0 << 4) | (b1 >> 4);

			tc = (dscp << 2) | (tc & 3);
			b0 = (b0 & 0xf0) | (tc >> 4);
			b1 = (tc << 4) | (b1 & 0x0f);
			ip[0] = (ip[0] & 0xffff0000) | b0 | ((__u32)b1 << 8);
		}
		/* payload length, next header kept, hop limit 64 */
		ip[1] = bpf_htons(ulen) | (ip[1] & 0x00ff0000) | (64U << 24);
		x = ip[2], ip[2] = ip[6], ip[6] = x;
		x = ip[3], ip[3] = ip[7], ip[7] = x;
		x = ip[4], ip[4] = ip[8], ip[8] = x;
		x = ip[5], ip[5] = ip[9], ip[9] = x;
	} else {
		__u64 ipsum;
		__u8 tos;

#pragma unroll
		for (int i = 0; i < 5; i++)
			ip[i] = *(__u32 *)(sl3 + 4 * i);
		le += (__u64)ip[3] + ip[4];
		tos = ip[0] >> 8;
		if (dscp)
			tos = (dscp << 2) | (tos & 3);
		/* version/IHL kept, TOS, total length; TTL 64, protocol kept, checksum zero for now */
		ip[0] = (ip[0] & 0xff) | ((__u32)tos << 8) | ((__u32)bpf_htons(ulen + 20) << 16);
		ip[2] = (ip[2] & 0xff00) | 64;
		/* Recomputed, not updated: a request with a wrong header sum gets a right one. */
		ipsum = (__u64)ip[0] + ip[1] + ip[2] + ip[3] + ip[4];
		ip[2] |= (__u32)(__u16)~csum_fold(ipsum) << 16;
		x = ip[3], ip[3] = ip[4], ip[4] = x;
	}
	sum_be = bpf_ntohs(csum_fold(le));
	c = ~csum_fold(sum_be + payload_csum) & 0xffff;
	if (!c)
		c = 0xffff;

	swap_macs(&mac0, &mac1);
	*(__u64 *)d = mac0;
	*(__u32 *)(d + 8) = mac1;
	*(__u16 *)(d + 12) = vlan_or_type;
	if (l3 == 18)
		*(__u32 *)(d + 14) = vlan_tail;
	if (l4->ipv6) {
#pragma unroll
		for (int i = 0; i < 10; i++)
			*(__u32 *)(dl3 + 4 * i) = ip[i];
	} else {
#pragma unroll
		for (int i = 0; i < 5; i++)
			*(__u32 *)(dl3 + 4 * i) = ip[i];
	}
	*(__u32 *)dl4 = (ports >> 16) | (ports << 16);
	*(__u32 *)(dl4 + 4) = bpf_htons(ulen) | ((__u32)bpf_htons(c) << 16);
	*(__u64 *)(dl4 + 8) = frame;
	return 0;
}

