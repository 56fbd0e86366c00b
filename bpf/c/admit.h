/* admit.h: which sources the kernel answers (docs/DESIGN.md invariant 7: not a reflector).
 *
 * The allow-list is an LPM trie (cache_maps.h) whose verdicts each CPU caches per source, stamped
 * with the list's generation; the per-source rate is a GCRA timestamp in an LRU map. Both run only
 * for a request the kernel would otherwise answer, so misses never pay for them.
 */
#pragma once

#include "common.h"
#include "counters.h"
#include "parsing.h"
#include "cache_maps.h"
#include "keys.h"

/* source_of reads the request's source address as two 8-byte words in memory order, IPv4 as
 * IPv4-mapped IPv6 (::ffff:a.b.c.d). The words are built in registers: four 4-byte stores read
 * back as two 8-byte loads would stall on store forwarding. */
static __always_inline int source_of(void *data, void *data_end, const struct l4_info *l4, __u64 *a0,
				     __u64 *a1)
{

	if (l4->ipv6) {
		struct ipv6hdr *ip6 = data + (l4->l3_off & 0xff);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		*a0 = *(__u64 *)&ip6->saddr;
		*a1 = *((__u64 *)&ip6->saddr + 1);
	} else {
		struct iphdr *ip = data + (l4->l3_off & 0xff);

		if ((void *)(ip + 1) > data_end)
			return -1;
		*a0 = 0;
		/* Little-endian: bytes 8-11 (00 00 ff ff) are the low half. */
		*a1 = (__u64)bpf_htonl(0xffff) | ((__u64)ip->saddr << 32);
	}
	return 0;
}

/* admit_source applies the allow-list and the per-source rate (GCRA). Returns 0 or a pass
 * reason. Called only for a request the kernel would otherwise answer, so misses never pay. */
static __always_inline int admit_source(void *data, void *data_end, const struct l4_info *l4,
					struct scratch *st)
{
	__u64 interval = cfg_interval_ns, *tat, now, t;
	struct allow_cache_ent *ce;
	__u32 gen = allow_gen, slot;
	__u64 a0, a1;

	union {
		struct in6_addr a;
		__u64 w[2];
	} src;

	if (source_of(data, data_end, l4, &a0, &a1))
		return PASS_MALFORMED;
	/* An IPv6 packet from an IPv4-mapped address would pass for that IPv4 client. */
	if (l4->ipv6 && a0 == 0 && (__u32)a1 == bpf_htonl(0xffff))
		return PASS_NOT_ALLOWED;
	slot = (__u32)(((a0 ^ a1) * HASH_P1) >> 52) & (ALLOW_CACHE_SLOTS - 1);
	ce = bpf_map_lookup_elem(&allow_cache, &slot);
	if (!ce)
		return PASS_INTERNAL;
	if (ce->gen != gen || *(__u64 *)ce->addr != a0 || *(__u64 *)(ce->addr + 8) != a1) {
		/* The trie is read after allow_gen: an entry stamped gen reflects every change
		 * userspace made before raising it to gen. */
		struct allow_key k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, &a0, 8);
		__builtin_memcpy(k.addr + 8, &a1, 8);
		ce->allowed = bpf_map_lookup_elem(&allow_sources, &k) != NULL;
		*(__u64 *)ce->addr = a0;
		*(__u64 *)(ce->addr + 8) = a1;
		ce->gen = gen;
	}
	if (!ce->allowed)
		return PASS_NOT_ALLOWED;
	if (!interval)
		return 0;
	if (!st->now_ns)
		st->now_ns = bpf_ktime_get_ns();
	now = st->now_ns;
	src.w[0] = a0;
	src.w[1] = a1;
	tat = bpf_map_lookup_elem(&source_tat, &src.a);
	if (!tat) {
		t = now + interval;
		bpf_map_update_elem(&source_tat, &src.a, &t, BPF_ANY);
		return 0;
	}
	t = *tat;
	if (t < now)
		t = now;
	if (t - now > cfg_burst_ns)
		return PASS_RATE_LIMITED;
	/* A plain store: two CPUs racing on one source may both pass, a bounded overshoot. */
	*tat = t + interval;
	return 0;
}

static __always_inline struct handoff *get_handoff(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&handoff_map, &zero);
}

/* handoff_key names a request packet for the XDP-to-TC handoff: its source address, ports, frame
 * header and UDP length, hashed. Never 0 (0 marks a free slot). Returns 0 or -1. */
static __always_inline int handoff_key(void *data, void *data_end, const struct l4_info *l4,
				       __u64 *key)
{
	__u8 *udp = data + (l4->l4_off & 0xff);
	__u64 a0, a1, h = HASH_SEED;

	if (source_of(data, data_end, l4, &a0, &a1) || (void *)(udp + 16) > data_end)
		return -1;
	h = hash_word(h, a0);
	h = hash_word(h, a1);
	h = hash_word(h, *(__u64 *)udp);       /* ports, length, checksum */
	h = hash_word(h, *(__u64 *)(udp + 8)); /* frame header */
	*key = hash_final(h, l4->payload_len) | 1;
	return 0;
}

/* take_handoff finds key among h's slots and frees its slot. Returns 1 if it was there. */
static __always_inline int take_handoff(struct handoff *h, __u64 key)
{
#pragma unroll
	for (int i = 0; i < HANDOFF_SLOTS; i++) {
		if (h->key[i] == key) {
			h->key[i] = 0;
			return 1;
		}
	}
	return 0;
}
