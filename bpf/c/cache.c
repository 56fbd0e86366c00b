//go:build ignore

/* cache.c: the programs that answer memcached UDP get/gets hits from the kernel cache.
 *
 * xdp_cache runs at the XDP hook and answers every hit whose reply the frame can grow to hold:
 * at the head (XDP guarantees headroom), else at the tail. Where the driver leaves too little room
 * for the reply (veth's and generic mode's frames have little tailroom), it hands the request to
 * tc_cache at TC ingress, where an skb can grow to any size (handoff_map says which requests).
 * Both run the same first pass over the request (request.h): every key found and checked, the
 * reply's size and checksum summed, without touching the packet. Only once every check has
 * passed is the packet resized and written, so nothing needs saving; anything else passes with
 * the packet as it came.
 *
 * One compilation unit, so that both programs share every map and setting.
 */

#include "common.h"
#include "counters.h"
#include "csum.h"
#include "parsing.h"
#include "cache_maps.h"
#include "keys.h"
#include "lookup.h"
#include "emit.h"
#include "reply.h"
#include "admit.h"
#include "meta.h"
#include "timing.h"

#include <linux/pkt_cls.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Unused pointers that put these types in BTF, so bpf2go generates their Go mirrors. */
const enum counter *unused_counter __attribute__((unused));
const struct counter_set *unused_counter_set __attribute__((unused));
const struct entry_hdr *unused_entry_hdr __attribute__((unused));

/* tc_ready is 1 once userspace has attached tc_cache, so xdp_cache hands requests to it. */
volatile __u32 tc_ready = 0;

#define REQ_CTX struct xdp_md
#define REQ_FN(name) name##_xdp
#define REQ_STORE_BYTES(ctx, off, p, n) bpf_xdp_store_bytes(ctx, off, (void *)(p), n)
#include "request.h"
#undef REQ_CTX
#undef REQ_FN
#undef REQ_STORE_BYTES

#define REQ_CTX struct __sk_buff
#define REQ_FN(name) name##_tc
#define REQ_STORE_BYTES(ctx, off, p, n) bpf_skb_store_bytes(ctx, off, (void *)(p), n, 0)
#include "request.h"
#undef REQ_CTX
#undef REQ_FN
#undef REQ_STORE_BYTES

/* read_headers copies the packet's first n (14..HDR_MAX) bytes to hdr, rounded up to whole words:
 * a few direct loads cost less than a bpf_xdp_load_bytes call. The request has at least 7 command
 * bytes after its headers, so the rounding stays inside the packet. */
static __always_inline int read_headers(struct xdp_md *ctx, __u64 *hdr, __u32 n)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	for (__u32 w = 0; w < HDR_MAX / 8; w++) {
		__u64 *p = data + w * 8;

		if (w * 8 >= n)
			break;
		if ((void *)(p + 1) > data_end)
			return -1;
		hdr[w] = *p;
	}
	return 0;
}

/* pass counts the reason and lets the packet up the stack untouched. */
static __always_inline int pass(__u32 reason)
{
	count(reason, 1);
	return XDP_PASS;
}

/* count_reply counts an answered request, on the TC program's own counters too when tc. */
static __always_inline void count_reply(const struct request *rq, int tc)
{
	struct counter_set *cs = counter_set();

	if (!cs)
		return;
	cs->n[CNT_REQUESTS] += 1;
	cs->n[CNT_HITS] += rq->nkeys;
	cs->n[CNT_BYTES] += rq->total;
	if (tc) {
		cs->n[CNT_TC_REQUESTS] += 1;
		cs->n[CNT_TC_HITS] += rq->nkeys;
		cs->n[CNT_TC_BYTES] += rq->total;
	}
}

/* hand_to_tc records the request for tc_cache and passes it unchanged. */
static __always_inline int hand_to_tc(struct xdp_md *ctx, const struct l4_info *l4)
{
	struct handoff *h;
	__u64 key;

	if (!tc_ready || !(h = get_handoff()) ||
	    handoff_key((void *)(long)ctx->data, (void *)(long)ctx->data_end, l4, &key))
		return pass(PASS_TOO_BIG);
	h->key[h->next & (HANDOFF_SLOTS - 1)] = key;
	h->next++;
	return pass(PASS_TO_TC);
}

static __always_inline int handle_xdp(struct xdp_md *ctx)
{
	struct request rq = {};
	struct scratch *st = NULL;
	__u32 orig_len, cmd_off;
	int ret, delta, head_grown = 0;
	__u64 t0 = hit_time_start(HIT_TIME_XDP);

	ret = first_pass_xdp(ctx, &st, &rq);
	if (ret || !st)
		return pass(ret ? ret : PASS_INTERNAL);
	cmd_off = rq.cmd_off;

	/* The program is not loaded frags-aware (xdp.frags), so the kernel hands it only linear
	 * frames: the frame's length is data_end - data, no helper call needed. */
	orig_len = (__u32)((long)ctx->data_end - (long)ctx->data);
	delta = (int)(rq.l4.l4_off + sizeof(struct udphdr) + rq.total) - (int)orig_len;
	/* A reply that grows does so at the head first: XDP guarantees headroom, while veth's
	 * copied skbs have only what rounding the data to 64 bytes leaves (0-63 bytes), so a reply
	 * that grows more than that would fail at the tail. build_headers writes the reply's
	 * headers at the new front straight from the request's. The tail is the fallback: replies
	 * that grow past the headroom (not tried at the head: a failed call costs a call), and
	 * shrinks. What neither can hold goes to TC. */
	if (delta > 0 && delta <= HEAD_GROW_MAX && cmd_off <= HDR_MAX && cmd_off >= 14 &&
	    !read_headers(ctx, st->hdr, cmd_off) && !bpf_xdp_adjust_head(ctx, -delta)) {
		head_grown = delta;
		/* Before the entries: they land where the request's headers still are. */
		if (build_headers((void *)(long)ctx->data, (void *)(long)ctx->data_end, &rq.l4, delta,
				  rq.total, st->csum))
			goto fail;
	} else if (bpf_xdp_adjust_tail(ctx, delta)) {
		return hand_to_tc(ctx, &rq.l4);
	}
#ifdef XDPCACHE_BENCH
	st->bench_head_grown = head_grown; /* for the benchmark wrapper's restore */
#endif

	if (write_entries_xdp(ctx, st, &rq))
		goto fail;
	/* In place, after the entries, which do not touch the headers: a failed write leaves them
	 * as they came. */
	if (!head_grown && build_headers((void *)(long)ctx->data, (void *)(long)ctx->data_end,
					 &rq.l4, 0, rq.total, st->csum))
		goto fail; /* unreachable: the headers were in bounds before the resize */
	count_reply(&rq, 0);
	hit_time_record(HIT_TIME_XDP, t0);
	return XDP_TX;

fail:
	/* Unreachable by construction (every bound was checked before the resize); if a helper
	 * fails anyway, put the request back: same length, and the command rebuilt from the keys,
	 * which matched the entries exactly. */
#ifdef XDPCACHE_BENCH
	st->bench_head_grown = 0;
#endif
	if (head_grown) {
		if (!bpf_xdp_adjust_head(ctx, head_grown) && cmd_off <= HDR_MAX && cmd_off >= 14)
			bpf_xdp_store_bytes(ctx, 0, st->hdr, cmd_off);
	}
	if (bpf_xdp_adjust_tail(ctx, (int)orig_len - bpf_xdp_get_buff_len(ctx)))
		return pass(PASS_INTERNAL);
	restore_command_xdp(ctx, st, &rq);
	return pass(PASS_INTERNAL);
}

SEC("xdp")
int xdp_cache(struct xdp_md *ctx)
{
	return handle_xdp(ctx);
}

/* tc_pass counts the reason and lets the skb go on untouched. */
static __always_inline int tc_pass(__u32 reason)
{
	count(reason, 1);
	return TC_ACT_OK;
}

/* tc_cache answers the requests xdp_cache handed over: the same first pass, against the cache as
 * it is now (an entry may have gone meanwhile), then the skb grows at the tail, which has no limit
 * an XDP frame has, and leaves through the device it came in on. Every other skb costs the header
 * parse; one to the cache's port, a lookup among this CPU's handoff slots too. */
SEC("tc")
int tc_cache(struct __sk_buff *skb)
{
	struct request rq = {};
	struct scratch *st = NULL;
	struct l4_info l4 = {};
	struct handoff *h;
	__u32 orig_len;
	__u64 key, t0;
	int ret;

	if (parse_udp((void *)(long)skb->data, (void *)(long)skb->data_end, cfg_port, &l4) ||
	    !(h = get_handoff()) ||
	    handoff_key((void *)(long)skb->data, (void *)(long)skb->data_end, &l4, &key) ||
	    !take_handoff(h, key))
		return TC_ACT_OK;
	t0 = hit_time_start(HIT_TIME_TC);
	/* The first pass reads the packet directly: it must be linear. */
	orig_len = skb->len;
	if (orig_len > 2048 || bpf_skb_pull_data(skb, orig_len))
		return tc_pass(PASS_TOO_BIG);

	ret = first_pass_tc(skb, &st, &rq);
	if (ret || !st)
		return tc_pass(ret ? ret : PASS_INTERNAL);
	if (bpf_skb_change_tail(skb, rq.l4.l4_off + sizeof(struct udphdr) + rq.total, 0))
		return tc_pass(PASS_TOO_BIG);
	if (write_entries_tc(skb, st, &rq))
		goto fail;
	if (build_headers((void *)(long)skb->data, (void *)(long)skb->data_end, &rq.l4, 0, rq.total,
			  st->csum))
		goto fail; /* unreachable: the headers were in bounds before the resize */
	count_reply(&rq, 1);
	hit_time_record(HIT_TIME_TC, t0);
	return bpf_redirect(skb->ifindex, 0);

fail:
	/* Unreachable by construction, as in xdp_cache: put the request back. */
	if (bpf_skb_change_tail(skb, orig_len, 0))
		return tc_pass(PASS_INTERNAL);
	restore_command_tc(skb, st, &rq);
	return tc_pass(PASS_INTERNAL);
}
