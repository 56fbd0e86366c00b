//go:build ignore

/* cache.c: the XDP program that answers memcached UDP get/gets hits from the kernel cache.
 *
 * A request is answered only when it is one whole datagram (frame seq 0 of 1), a get or gets in
 * canonical form ("get k1 k2\r\n", single spaces, printable keys), every key has a live entry, and
 * the reply fits one datagram and the MTU. The first pass finds every key and sums the reply's
 * size and checksum without touching the packet; only then is the packet resized and written.
 * Anything else returns XDP_PASS with the packet as it came.
 */

#include "common.h"
#include "counters.h"
#include "csum.h"
#include "parsing.h"
#include "cache_maps.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Unused pointers that put these types in BTF, so bpf2go generates their Go mirrors. */
const enum counter *unused_counter __attribute__((unused));
const enum entry_class *unused_entry_class __attribute__((unused));

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* Sum of "END\r\n" as big-endian words from an even offset. */
#define END_CSUM (0x454E + 0x440D + 0x0A00)
#define END_LEN 5

#define SCAN_CRLF 0x10000 /* scan_key: the key ended the line */

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch_map, &zero);
}

/* scan_key copies the key at st->pos into st->key and hashes it. It returns the key length,
 * ORed with SCAN_CRLF when "\r\n" follows it, or a negative pass reason. A global function, so
 * the verifier checks its byte loop once rather than once per caller state. */
__noinline int scan_key(struct xdp_md *ctx)
{
	struct scratch *st = get_scratch();
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 h = FNV_OFFSET;
	__u32 pos, n;
	__u8 *p;

	if (!st)
		return -PASS_INTERNAL;
	pos = st->pos;
	if (pos > 2048)
		return -PASS_MALFORMED;
	p = data + pos;
	for (n = 0; n <= KEY_MAX; n++) {
		__u8 c;

		if ((void *)(p + n + 1) > data_end)
			return -PASS_MALFORMED;
		c = p[n];
		if (c == ' ' || c == '\r') {
			if (n == 0)
				return -PASS_MALFORMED;
			st->hash = h;
			if (c == ' ')
				return n;
			if ((void *)(p + n + 2) > data_end || p[n + 1] != '\n')
				return -PASS_MALFORMED;
			return n | SCAN_CRLF;
		}
		/* Printable ASCII only: other bytes may be valid to memcached, but the kernel
		 * answers only what it is sure the server would answer the same way. */
		if (c < 0x21 || c > 0x7e)
			return -PASS_MALFORMED;
		st->key[n] = c;
		h ^= c;
		h *= FNV_PRIME;
	}
	return -PASS_KEY_TOO_LONG;
}

/* key_matches compares the scanned key with the key stored in an entry at data[6:], a word at a
 * time; bytes past the key are masked off. */
static __always_inline int key_matches(struct scratch *st, const struct entry_hdr *h,
				       const __u8 *data, __u32 cap, __u32 n)
{
	if (h->key_len != n)
		return 0;
	for (__u32 w = 0; w < (KEY_MAX + 8) / 8; w++) {
		__u32 off = w * 8;
		__u64 a, b, mask = ~0ULL;

		if (off >= n)
			break;
		if (6 + off + 8 > cap)
			return 0;
		a = *(__u64 *)(st->key + off);
		b = *(__u64 *)(data + 6 + off);
		if (n - off < 8)
			mask = (1ULL << ((n - off) * 8)) - 1; /* little-endian: low bytes first */
		if ((a ^ b) & mask)
			return 0;
	}
	return 1;
}

/* check_entry validates one entry for the scanned key and adds its piece of the reply to the
 * running size and checksum. Returns 0 or a negative pass reason. */
static __always_inline int check_entry(struct scratch *st, const struct entry_hdr *h,
				       const __u8 *data, __u32 cap, __u32 n)
{
	__u64 flushed = flushed_before_ns;
	__u32 off, len = h->len;

	if (h->filled_ns < flushed)
		return -PASS_FLUSHED;
	if (h->expires_ns) {
		/* The clock is read only for entries that expire, once per packet. */
		if (!st->now_ns)
			st->now_ns = bpf_ktime_get_ns();
		if (st->now_ns >= h->expires_ns)
			return -PASS_EXPIRED;
	}
	/* The same hash for another key: a miss, never the other key's value. */
	if (!key_matches(st, h, data, cap, n))
		return -PASS_MISS;
	if (len == 0 || len > cap || h->hdr_len >= len || h->cas_len == 0 || h->cas_len > CAS_MAX)
		return -PASS_INTERNAL;

	off = FRAME_LEN + st->out_len; /* payload offset of this piece */
	if (off > MAX_PAYLOAD)
		return -PASS_TOO_BIG;
	if (st->gets) {
		st->csum += csum_at(h->csum_head, off);
		st->csum += csum_at(h->csum_cas, off + h->hdr_len);
		st->csum += csum_at(h->csum_tail, off + h->hdr_len + h->cas_len);
		st->out_len += len + h->cas_len;
	} else {
		st->csum += csum_at(h->csum_data, off);
		st->out_len += len;
	}
	return 0;
}

#define LOOKUP_CLASS(N)                                                            \
	case CLASS_##N: {                                                          \
		struct entry_##N *e = bpf_map_lookup_elem(&entries_##N, &iv->version); \
		if (!e)                                                            \
			return -PASS_MISS;                                         \
		ret = check_entry(st, &e->h, e->data, N, n);                       \
		break;                                                             \
	}

/* lookup_key finds key number i (at st->pos), checks it is servable and records it in slot i.
 * Returns 1 when it was the last key of the line, 0 when another follows, or a negative pass
 * reason. */
__noinline int lookup_key(struct xdp_md *ctx, __u32 i)
{
	struct scratch *st = get_scratch();
	struct index_val *iv;
	int scanned, ret;
	__u32 n;

	if (!st)
		return -PASS_INTERNAL;
	scanned = scan_key(ctx);
	if (scanned < 0)
		return scanned;
	n = scanned & 0xffff;
	if (n == 0 || n > KEY_MAX)
		return -PASS_MALFORMED;

	iv = bpf_map_lookup_elem(&index_map, &st->hash);
	if (!iv)
		return -PASS_MISS;
	switch (iv->class) {
		LOOKUP_CLASS(128)
		LOOKUP_CLASS(256)
		LOOKUP_CLASS(512)
		LOOKUP_CLASS(1024)
		LOOKUP_CLASS(1392)
	default:
		return -PASS_INTERNAL;
	}
	if (ret < 0)
		return ret;
	if (!iv->referenced)
		iv->referenced = 1;
	st->slots[i & (MAX_KEYS - 1)].version = iv->version;
	st->slots[i & (MAX_KEYS - 1)].class = iv->class;
	/* Skip the key and its delimiter: one space, or "\r\n". */
	st->pos += n + 1;
	if (scanned & SCAN_CRLF) {
		st->pos += 1;
		return 1;
	}
	return 0;
}

#define EMIT_CLASS(N)                                                                   \
	case CLASS_##N: {                                                               \
		struct entry_##N *e = bpf_map_lookup_elem(&entries_##N, &s->version);       \
		__u64 len, hl, cl;                                                      \
		if (!e)                                                                 \
			return -1;                                                      \
		len = e->h.len;                                                         \
		hl = e->h.hdr_len;                                                      \
		cl = e->h.cas_len;                                                      \
		if (hl >= len || !in_range(len, 1, N) || !in_range(hl, 1, N) ||         \
		    !in_range(cl, 1, CAS_MAX))                                          \
			return -1;                                                      \
		if (!st->gets)                                                          \
			return bpf_xdp_store_bytes(ctx, pos, e->data, len) ? -1 : (int)len; \
		/* Whole data shifted by the CAS length puts the value where it belongs; \
		 * then the header and the CAS are written over the front. */           \
		if (bpf_xdp_store_bytes(ctx, pos + cl, e->data, len) ||                 \
		    bpf_xdp_store_bytes(ctx, pos, e->data, hl) ||                       \
		    bpf_xdp_store_bytes(ctx, pos + hl, e->h.cas, cl))                   \
			return -1;                                                      \
		return (int)(len + cl);                                                 \
	}

/* emit_key writes the entry recorded in slot i at packet offset pos. Returns the bytes written
 * or -1. Entries are immutable and deleted only long after they leave the index, so this is the
 * same entry the first pass checked. */
__noinline int emit_key(struct xdp_md *ctx, __u32 i, __u32 pos)
{
	struct scratch *st = get_scratch();
	struct slot *s;

	if (!st)
		return -1;
	s = &st->slots[i & (MAX_KEYS - 1)];
	switch (s->class) {
		EMIT_CLASS(128)
		EMIT_CLASS(256)
		EMIT_CLASS(512)
		EMIT_CLASS(1024)
		EMIT_CLASS(1392)
	default:
		return -1;
	}
}

/* pass counts the reason and lets the packet up the stack untouched. */
static __always_inline int pass(__u32 reason)
{
	count(reason, 1);
	return XDP_PASS;
}

/* restore puts the request back after a failed reply: original length and command bytes. */
static __always_inline int restore(struct xdp_md *ctx, struct scratch *st, __u32 orig_len,
				   __u32 cmd_off, __u32 cmd_len)
{
	int cur = bpf_xdp_get_buff_len(ctx);

	if (bpf_xdp_adjust_tail(ctx, (int)orig_len - cur))
		return -1;
	if (cmd_len == 0 || cmd_len > MAX_PAYLOAD)
		return -1;
	return bpf_xdp_store_bytes(ctx, cmd_off, st->saved, cmd_len);
}

/* finish_headers turns the request's headers into the reply's: swapped addresses, new lengths,
 * the reply mark, and both checksums. */
static __always_inline int finish_headers(struct xdp_md *ctx, const struct l4_info *l4,
					  __u32 payload_len, __u64 payload_csum)
{
	void *data, *data_end;
	struct udphdr *udp;
	__u64 sum = payload_csum;
	__u32 ulen = payload_len + sizeof(struct udphdr);
	__u8 dscp = cfg_reply_dscp;

	if (swap_addrs(ctx, l4))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	udp = data + (l4->l4_off & 0xff);
	if ((void *)(udp + 1) > data_end)
		return -1;
	udp->len = bpf_htons(ulen);
	udp->check = 0;

	if (l4->ipv6) {
		struct ipv6hdr *ip6 = data + (l4->l3_off & 0xff);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		ip6->payload_len = bpf_htons(ulen);
		ip6->hop_limit = 64;
		if (dscp) {
			__u8 tc = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);

			tc = (dscp << 2) | (tc & 3);
			ip6->priority = tc >> 4;
			ip6->flow_lbl[0] = (tc << 4) | (ip6->flow_lbl[0] & 0x0f);
		}
		sum += csum_words(&ip6->saddr, 16);
		sum += IPPROTO_UDP + ulen;
	} else {
		struct iphdr *ip = data + (l4->l3_off & 0xff);

		if ((void *)(ip + 1) > data_end)
			return -1;
		ip->tot_len = bpf_htons(ulen + sizeof(*ip));
		ip->ttl = 64;
		if (dscp)
			ip->tos = (dscp << 2) | (ip->tos & 3);
		ip->check = 0;
		ip->check = bpf_htons(~csum_fold(csum_words(ip, 10)) & 0xffff);
		sum += csum_words(&ip->saddr, 4);
		sum += IPPROTO_UDP + ulen;
	}
	sum += csum_words(udp, 4); /* ports and length; the checksum field is zero */
	__u16 c = ~csum_fold(sum) & 0xffff;
	udp->check = bpf_htons(c ? c : 0xffff);
	return 0;
}

static __always_inline int handle_request(struct xdp_md *ctx)
{
	struct l4_info l4 = {};
	struct scratch *st;
	struct mc_frame *fr;
	void *data, *data_end;
	__u32 cmd_off, cmd_len, orig_len, nkeys = 0, total, pos, ip_hdr;
	int ret, done = 0, delta, head_grown = 0;

	ret = parse_udp(ctx, cfg_port, &l4);
	if (ret)
		return pass(ret);
	if (l4.payload_len < FRAME_LEN + 7) /* frame header and "get k\r\n" */
		return pass(l4.payload_len < FRAME_LEN ? PASS_NOT_FRAMED : PASS_NOT_GET);
	if (l4.payload_len > MAX_PAYLOAD)
		return pass(PASS_TOO_BIG);

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	fr = data + ((l4.l4_off + sizeof(struct udphdr)) & 0xff);
	if ((void *)(fr + 1) > data_end)
		return pass(PASS_MALFORMED);
	if (fr->seq != 0 || fr->total != bpf_htons(1) || fr->reserved != 0)
		return pass(PASS_NOT_FRAMED);

	st = get_scratch();
	if (!st)
		return pass(PASS_INTERNAL);

	cmd_off = l4.l4_off + sizeof(struct udphdr) + FRAME_LEN;
	cmd_len = l4.payload_len - FRAME_LEN;
	{
		__u8 *c = data + (cmd_off & 0xff);

		if ((void *)(c + 5) > data_end)
			return pass(PASS_MALFORMED);
		if (c[0] != 'g' || c[1] != 'e' || c[2] != 't')
			return pass(PASS_NOT_GET);
		if (c[3] == ' ') {
			st->gets = 0;
			st->pos = cmd_off + 4;
		} else if (c[3] == 's' && c[4] == ' ') {
			st->gets = 1;
			st->pos = cmd_off + 5;
		} else {
			return pass(PASS_NOT_GET);
		}
	}
	st->now_ns = 0;
	st->out_len = 0;
	st->csum = bpf_ntohs(fr->request_id) + 1; /* frame header words: id, seq 0, total 1, 0 */

	for (__u32 i = 0; i < MAX_KEYS; i++) {
		ret = lookup_key(ctx, i);
		if (ret < 0) {
			__u32 reason = -ret;

			if (i > 0 && (reason == PASS_MISS || reason == PASS_EXPIRED ||
				      reason == PASS_FLUSHED))
				reason = PASS_PARTIAL;
			return pass(reason);
		}
		nkeys++;
		if (ret == 1) {
			done = 1;
			break;
		}
	}
	if (!done)
		return pass(PASS_TOO_MANY_KEYS);
	/* The line must end exactly where the datagram does: nothing pipelined after it. */
	if (st->pos != cmd_off + cmd_len)
		return pass(PASS_MALFORMED);

	total = FRAME_LEN + st->out_len + END_LEN;
	ip_hdr = l4.ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	if (total > MAX_PAYLOAD || ip_hdr + sizeof(struct udphdr) + total > cfg_mtu)
		return pass(PASS_TOO_BIG);
	st->csum += csum_at(END_CSUM, FRAME_LEN + st->out_len);

	/* Keep the command bytes so a failure below can put the packet back as it came. */
	if (cmd_len == 0 || cmd_len > MAX_PAYLOAD)
		return pass(PASS_MALFORMED);
	if (bpf_xdp_load_bytes(ctx, cmd_off, st->saved, cmd_len))
		return pass(PASS_INTERNAL);

	orig_len = bpf_xdp_get_buff_len(ctx);
	delta = (int)(l4.l4_off + sizeof(struct udphdr) + total) - (int)orig_len;
	if (bpf_xdp_adjust_tail(ctx, delta)) {
		/* No tailroom (veth's copied skbs have none): grow at the head instead, where
		 * XDP guarantees room, and move the headers to the new front. */
		if (delta <= 0 || delta > MAX_PAYLOAD || cmd_off > HDR_MAX || cmd_off < 14)
			return pass(PASS_TOO_BIG);
		if (bpf_xdp_load_bytes(ctx, 0, st->headers, cmd_off))
			return pass(PASS_INTERNAL);
		if (bpf_xdp_adjust_head(ctx, -delta))
			return pass(PASS_TOO_BIG);
		head_grown = delta;
		if (bpf_xdp_store_bytes(ctx, 0, st->headers, cmd_off))
			goto fail;
	}

	pos = cmd_off;
	for (__u32 i = 0; i < MAX_KEYS; i++) {
		if (i >= nkeys)
			break;
		ret = emit_key(ctx, i, pos);
		if (ret < 0)
			goto fail;
		pos += ret;
	}
	if (bpf_xdp_store_bytes(ctx, pos, "END\r\n", END_LEN))
		goto fail;
	if (finish_headers(ctx, &l4, total, st->csum))
		goto fail; /* unreachable: the headers were in bounds before the resize */

	count(CNT_REQUESTS, 1);
	count(CNT_HITS, nkeys);
	count(CNT_BYTES, total);
	return XDP_TX;

fail:
	if (head_grown) {
		/* Drop the grown head; the original headers are then in front again, and only
		 * the command bytes may have been overwritten. */
		if (!bpf_xdp_adjust_head(ctx, head_grown) && cmd_off <= HDR_MAX && cmd_off >= 14)
			bpf_xdp_store_bytes(ctx, 0, st->headers, cmd_off);
	}
	restore(ctx, st, orig_len, cmd_off, cmd_len);
	return pass(PASS_INTERNAL);
}

SEC("xdp")
int xdp_cache(struct xdp_md *ctx)
{
	return handle_request(ctx);
}

#ifdef XDPCACHE_BENCH
#include "bench.h"
BENCH_PROGRAM(xdp_cache_bench, handle_request)
#endif
