/* common.h: the includes and small macros every XDP object in this package shares.
 *
 * UAPI headers plus libbpf's bpf_helpers.h and bpf_endian.h (Debian's libbpf-dev): XDP programs
 * touch only packet bytes and their own maps, so they need neither vmlinux.h nor CO-RE.
 */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* 802.1Q tag: TCI then the encapsulated EtherType. */
struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* The most a reply can grow at the head: drivers, veth and generic XDP all give a frame
 * XDP_PACKET_HEADROOM (256) bytes in front, and bpf_xdp_adjust_head keeps room for the kernel's
 * struct xdp_frame (40 bytes) there. */
#define HEAD_GROW_MAX (256 - 40)

#define FRAME_LEN 8 /* memcached UDP frame header bytes */
#define HDR_MAX 128 /* Ethernet, VLAN, IPv6, UDP and frame headers fit */

/* memcached's UDP frame header, big-endian on the wire. */
struct mc_frame {
	__be16 request_id;
	__be16 seq;
	__be16 total;
	__be16 reserved;
};

/* in_range checks lo <= v <= hi in two separate steps, with barriers so clang can neither fuse
 * them into one subtraction on a copy nor use a copy of v from before them: the verifier must see
 * the bounds on the very register later passed to a helper. */
#define in_range(v, lo, hi)                                       \
	({                                                        \
		int ok_ = 0;                                      \
		barrier_var(v);                                   \
		if ((v) <= (hi)) {                                \
			barrier_var(v);                           \
			if ((v) >= (lo))                          \
				ok_ = 1;                          \
		}                                                 \
		barrier_var(v);                                   \
		ok_;                                              \
	})

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
