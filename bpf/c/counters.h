/* counters.h: the per-CPU counters the programs keep and the reasons a packet is passed.
 *
 * Pass reasons run from PASS_NOT_IP_UDP to PASS_TO_TC; the TC path's own counters follow them.
 * All counters sit in one per-CPU struct, so a packet looks it up once and increments with plain
 * adds, no atomics; userspace sums the CPUs at scrape time. bpf2go generates the Go mirror of
 * enum counter (-type counter), so the collector's reason labels and these indexes cannot drift
 * apart.
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
	PASS_NOT_FRAMED,     /* no memcached frame header, or one that does not say 1 datagram */
	PASS_NOT_GET,        /* a command other than get, gets and mg */
	PASS_KEY_TOO_LONG,   /* a key over 250 bytes */
	PASS_TOO_MANY_KEYS,  /* more keys than the program handles in one request */
	PASS_MISS,           /* a key not in the kernel cache */
	PASS_EXPIRED,        /* a key whose kernel copy has expired */
	PASS_FLUSHED,        /* a key filled before the last flush */
	PASS_PARTIAL,        /* a multi-get with some keys served and one not */
	PASS_TOO_BIG,        /* the request or the reply does not fit one datagram */
	PASS_MALFORMED,      /* lengths or syntax this program does not accept */
	PASS_INTERNAL,       /* a helper failed; the packet is restored and passed */
	PASS_NOT_ALLOWED,    /* a source outside the allow-list */
	PASS_RATE_LIMITED,   /* a source over its reply rate */
	PASS_AMPLIFICATION,  /* the reply would be too many times the request's size */
	PASS_META_FLAGS,     /* an mg with a flag, or of an item with meta state, the kernel leaves to the server */
	PASS_TO_TC,          /* XDP could not grow the frame enough: handed to the TC program */
	CNT_TC_REQUESTS,     /* of CNT_REQUESTS, those the TC program answered */
	CNT_TC_HITS,         /* of CNT_HITS, those the TC program served */
	CNT_TC_BYTES,        /* of CNT_BYTES, those the TC program sent */
	CNT_MAX,
};

/* counter_set is every counter of one CPU. */
struct counter_set {
	__u64 n[CNT_MAX];
};

/* counters: key 0, value this CPU's counters, indexed by enum counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counter_set);
} counters SEC(".maps");

static __always_inline struct counter_set *counter_set(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

static __always_inline void count(__u32 which, __u64 n)
{
	struct counter_set *c = counter_set();
	__u64 w = which;

	/* in_range keeps the bounds check on the register that indexes. */
	if (c && in_range(w, 0, CNT_MAX - 1))
		c->n[w] += n;
}
