/* bench.h: wrappers that let BPF_PROG_RUN measure a program that rewrites its packet.
 *
 * BPF_PROG_RUN with a repeat count runs the program again and again on the same buffer, and live
 * frame mode recycles pages without restoring them, so after the first run a cache program sees
 * its own reply, not the request. Built only with -DXDPCACHE_BENCH (the *_bench objects), each
 * wrapper runs the real program and then puts the original frame back: the head where it was,
 * the tail cut to the request's length, the bytes from bench_packet. Every program's run makes
 * the same three helper calls for it, whether or not it moved the head or the tail (a call that
 * moves nothing costs what one that moves does), so the restore costs the same
 * for every program, and xdp_restore_only measures it alone.
 */
#pragma once

#include "common.h"

#define BENCH_MAX 512

struct bench_pkt {
	__u32 len;
	__u32 verdict; /* the wrapped program's verdict, passed through memory (see BENCH_PROGRAM) */
	__u8 data[BENCH_MAX];
};

/* bench_packet: key 0, value the frame every run starts from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_pkt);
} bench_packet SEC(".maps");

/* bench_restore puts the request back after a run that grew the frame's head by head_grown
 * bytes (0 for a program that did not). */
static __always_inline int bench_restore(struct xdp_md *ctx, int head_grown)
{
	__u32 zero = 0;
	struct bench_pkt *p = bpf_map_lookup_elem(&bench_packet, &zero);
	__u64 len;
	int cur;

	if (!p)
		return -1;
	if (bpf_xdp_adjust_head(ctx, head_grown))
		return -1;
	len = p->len;
	if (!in_range(len, 14, BENCH_MAX))
		return -1;
	cur = bpf_xdp_get_buff_len(ctx);
	if (bpf_xdp_adjust_tail(ctx, (int)len - cur))
		return -1;
	return bpf_xdp_store_bytes(ctx, 0, p->data, len);
}

/* bench_verdict passes a verdict through memory: read back, it is one unknown value to the
 * verifier, so the restore after every return of the program is checked once, not once per
 * return (which took the cache program's wrapper near the verifier's 1M-instruction limit). */
static __always_inline int bench_verdict(int verdict)
{
	__u32 zero = 0;
	struct bench_pkt *p = bpf_map_lookup_elem(&bench_packet, &zero);

	if (!p)
		return XDP_ABORTED;
	p->verdict = verdict;
	return *(volatile __u32 *)&p->verdict;
}

/* BENCH_PROGRAM wraps handler; head_grown() says how far the run grew the head. */
#define BENCH_PROGRAM(name, handler, head_grown)          \
	SEC("xdp")                                        \
	int name(struct xdp_md *ctx)                      \
	{                                                 \
		int verdict = bench_verdict(handler(ctx)); \
		if (bench_restore(ctx, head_grown()))     \
			return XDP_ABORTED;               \
		return verdict;                           \
	}

SEC("xdp")
int xdp_restore_only(struct xdp_md *ctx)
{
	return bench_restore(ctx, 0) ? XDP_ABORTED : XDP_PASS;
}
