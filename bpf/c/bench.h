/* bench.h: wrappers that let BPF_PROG_RUN measure a program that rewrites its packet.
 *
 * BPF_PROG_RUN with a repeat count runs the program again and again on the same buffer, and live
 * frame mode recycles pages without restoring them, so after the first run a cache program sees
 * its own reply, not the request. Built only with -DXDPCACHE_BENCH (the *_bench objects), each
 * wrapper runs the real program and then puts the original frame back from bench_packet. The
 * restore costs the same for every program, and xdp_restore_only measures it alone, so a
 * benchmark can subtract it.
 */
#pragma once

#include "common.h"

#define BENCH_MAX 512

struct bench_pkt {
	__u32 len;
	__u8 data[BENCH_MAX];
};

/* bench_packet: key 0, value the frame every run starts from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_pkt);
} bench_packet SEC(".maps");

static __always_inline int bench_restore(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_pkt *p = bpf_map_lookup_elem(&bench_packet, &zero);
	__u64 len;
	int cur;

	if (!p)
		return -1;
	len = p->len;
	if (!in_range(len, 14, BENCH_MAX))
		return -1;
	cur = bpf_xdp_get_buff_len(ctx);
	if (bpf_xdp_adjust_tail(ctx, (int)len - cur))
		return -1;
	return bpf_xdp_store_bytes(ctx, 0, p->data, len);
}

#define BENCH_PROGRAM(name, handler)                      \
	SEC("xdp")                                        \
	int name(struct xdp_md *ctx)                      \
	{                                                 \
		int verdict = handler(ctx);               \
		if (bench_restore(ctx))                   \
			return XDP_ABORTED;               \
		return verdict;                           \
	}

SEC("xdp")
int xdp_restore_only(struct xdp_md *ctx)
{
	return bench_restore(ctx) ? XDP_ABORTED : XDP_PASS;
}
