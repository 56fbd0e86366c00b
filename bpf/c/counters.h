/* counters.h: the per-CPU counters the programs keep and the reasons a packet is passed.
 *
 * One PERCPU_ARRAY slot per counter, so the hot path increments without atomics; userspace sums
 * the CPUs at scrape time. bpf2go generates the Go mirror of enum counter (-type counter), so the
 * collector's reason labels and these indexes cannot drift apart.
 */
#pragma once

#include "common.h"

enum counter {
	CNT_REQUESTS = 0,    /* GET requests answered in the kernel (a multi-get counts once) */
	CNT_HITS,            /* keys served in the kernel (a multi-get of n keys counts n) */
	CNT_BYTES,           /* UDP payload bytes of kernel replies */
	PASS_NOT_IP_UDP,     /* not IPv4/IPv6 UDP, or stacked VLAN tags */
	PASS_WRONG_PORT,     /* UDP to another port */
	PASS_IP_OPTIONS,     /* IPv4 header with options */
	PASS_IPV6_EXT,       /* IPv6 extension headers */
	PASS_FRAGMENT,       /* IP fragment */
	PASS_NOT_FRAMED,     /* no memcached frame header, or not seq 0 of 1 with reserved 0 */
	PASS_NOT_GET,        /* a command other than get/gets */
	PASS_KEY_TOO_LONG,   /* a key over 250 bytes */
	PASS_TOO_MANY_KEYS,  /* more keys than the program handles in one request */
	PASS_MISS,           /* a key not in the kernel cache */
	PASS_EXPIRED,        /* a key whose kernel copy has expired */
	PASS_FLUSHED,        /* a key filled before the last flush */
	PASS_PARTIAL,        /* a multi-get with some keys served and one not */
	PASS_TOO_BIG,        /* the request or the reply does not fit one datagram */
	PASS_MALFORMED,      /* lengths or syntax this program does not accept */
	PASS_INTERNAL,       /* a helper failed; the packet is restored and passed */
	CNT_MAX,
};

/* counters: key enum counter, value a per-CPU event count. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);

	if (v)
		*v += n;
}
