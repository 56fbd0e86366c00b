//go:build ignore

/* echo_bench.c: echo.c wrapped for BPF_PROG_RUN benchmarks (bench.h), and the floor program: the
 * least any program answering the cache's replies does. Only tests load this object. */

#define XDPCACHE_BENCH
#include "echo.c"
#include "bench.h"
#include "copy.h"

static __always_inline int no_head_growth(void)
{
	return 0;
}

BENCH_PROGRAM(xdp_echo_bench, echo, no_head_growth)

/* The floor program's reply, set by the benchmark before load to the cache's reply's. */
volatile const __s32 cfg_floor_grow = 0; /* bytes the reply is longer than the request */
volatile const __u32 cfg_floor_copy = 8; /* payload bytes after the frame header */

struct floor_bytes {
	__u8 b[COPY_LIMIT];
};

/* floor_value: key 0, the bytes the floor program copies into its reply. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct floor_bytes);
} floor_value SEC(".maps");

__s32 floor_head_grown; /* what the last run grew at the head, for the restore */

/* move_headers moves the first n (8..HDR_MAX) bytes from packet offset from (8..HEAD_GROW_MAX)
 * to the front, a word at a time, forwards (the destination lies at least a word before the
 * source, so no word is read after it was overwritten), the last word overlapping the one before
 * it. */
static __always_inline int move_headers(struct xdp_md *ctx, __u32 from, __u32 n)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 f = from, t = n - 8;
	__u8 *s, *d;

	if (!in_range(f, 8, HEAD_GROW_MAX) || !in_range(t, 0, HDR_MAX - 8))
		return -1;
	s = data + f;
	for (__u32 w = 0; w < HDR_MAX / 8; w++) {
		if (w * 8 >= t)
			break;
		d = data + w * 8;
		if ((void *)(s + w * 8 + 8) > data_end || (void *)(d + 8) > data_end)
			return -1;
		*(__u64 *)d = *(__u64 *)(s + w * 8);
	}
	d = data + t;
	if ((void *)(s + t + 8) > data_end || (void *)(d + 8) > data_end)
		return -1;
	*(__u64 *)d = *(__u64 *)(s + t);
	return 0;
}

/* floor_reply is the least a program answering from memory does beyond echo for a reply
 * cfg_floor_grow bytes longer than the request: echo's parse and swap; the frame grown where
 * the cache grows it (at the head up to HEAD_GROW_MAX bytes, else at the tail); after a head
 * growth the headers moved to the new front; cfg_floor_copy payload bytes copied with the
 * cache's copy. No lookup, no validation, no lengths, no checksums: what separates it from the
 * cache is the cost of answering a get beyond moving its bytes. */
static __always_inline int floor_reply(struct xdp_md *ctx)
{
	struct l4_info l4 = {};
	__s32 grow = cfg_floor_grow;
	__u32 zero = 0, hdr;
	struct floor_bytes *v = bpf_map_lookup_elem(&floor_value, &zero);

	if (!v || parse_udp((void *)(long)ctx->data, (void *)(long)ctx->data_end, cfg_port, &l4) || swap_addrs(ctx, &l4))
		return XDP_PASS;
	hdr = (l4.l4_off & 0x7f) + sizeof(struct udphdr) + FRAME_LEN;
	if (grow > 0 && grow <= HEAD_GROW_MAX) {
		if (bpf_xdp_adjust_head(ctx, -grow))
			return XDP_ABORTED;
		floor_head_grown = grow;
		if (move_headers(ctx, grow, hdr))
			return XDP_ABORTED;
	} else if (bpf_xdp_adjust_tail(ctx, grow)) {
		return XDP_ABORTED;
	}
	return copy_piece((void *)(long)ctx->data, (void *)(long)ctx->data_end, hdr, v->b, cfg_floor_copy) ? XDP_ABORTED : XDP_TX;
}

static __always_inline int floor_head_growth(void)
{
	int grown = floor_head_grown;

	floor_head_grown = 0;
	return grown;
}

BENCH_PROGRAM(xdp_floor_bench, floor_reply, floor_head_growth)
