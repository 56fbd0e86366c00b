/* timing.h: the kernel path's own time per answered request, as a log2 histogram per program.
 *
 * A handler calls hit_time_start() when a request reaches it and hit_time_record() just before it
 * returns the reply. One request in cfg_hit_time_mask + 1 (a per-CPU tick decides, before the
 * program knows whether it will answer) reads the clock at both ends; the others pay one inlined
 * array lookup and an add. The time is kept in units of 2^-30 s (one "tick", 0.93 ns), so that
 * bucket b, which holds times in (2^(b-1), 2^b] ticks, is (2^(b-31), 2^(b-30)] seconds: exactly
 * bucket b - 30 of a Prometheus native histogram of schema 0, and classic buckets with bounds
 * 2^(b-30) s. Userspace sums the CPUs at scrape time (bpf/collector.go).
 */
#pragma once

#include "common.h"

#define HIT_TIME_BUCKETS 33 /* bucket 32 ends at 2^2 s; longer times land there too */

/* hit_time_hist is one program's histogram on one CPU. */
struct hit_time_hist {
	__u64 bucket[HIT_TIME_BUCKETS]; /* timed replies by log2 of their time in ticks */
	__u64 sum_ns;                   /* their total time, in ns */
	__u64 tick;                     /* requests seen, for the sampling decision */
};

enum hit_time_prog {
	HIT_TIME_XDP = 0,
	HIT_TIME_TC,
	HIT_TIME_PROGS,
};

/* Puts the enum in BTF, so bpf2go generates its Go mirror. */
const enum hit_time_prog *unused_hit_time_prog __attribute__((unused));

/* hit_time: key enum hit_time_prog, value this CPU's histogram of that program's replies. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HIT_TIME_PROGS);
	__type(key, __u32);
	__type(value, struct hit_time_hist);
} hit_time SEC(".maps");

/* Time one request in cfg_hit_time_mask + 1 (a power of two minus one; 0 times every one). */
volatile const __u32 cfg_hit_time_mask = 63;

/* hit_time_start returns the clock if this request is to be timed, else 0. */
static __always_inline __u64 hit_time_start(__u32 prog)
{
	struct hit_time_hist *h = bpf_map_lookup_elem(&hit_time, &prog);

	if (!h || (h->tick++ & cfg_hit_time_mask))
		return 0;
	return bpf_ktime_get_ns();
}

/* hit_time_record adds the time since start (from hit_time_start) to prog's histogram. */
static __always_inline void hit_time_record(__u32 prog, __u64 start)
{
	struct hit_time_hist *h;
	__u64 ns, t, b;

	if (!start)
		return;
	ns = bpf_ktime_get_ns() - start;
	if (ns > (1ULL << 31))
		ns = 1ULL << 31; /* keeps the product below 2^64; the last bucket holds it anyway */
	/* ns * 2^30 / 10^9, as a multiply by 2^62 / 10^9 (rounded) and a shift. */
	t = (ns * 4611686019ULL) >> 32;
	/* b = bit length of t - 1: t in (2^(b-1), 2^b]; 0 for t <= 1. */
	b = t > 1 ? 64 - __builtin_clzll(t - 1) : 0;
	h = bpf_map_lookup_elem(&hit_time, &prog);
	/* b <= 32 follows from the clamp above, but clang drops a check it can prove; in_range
	 * keeps one the verifier sees. */
	if (!h || !in_range(b, 0, HIT_TIME_BUCKETS - 1))
		return;
	h->bucket[b] += 1;
	h->sum_ns += ns;
}
