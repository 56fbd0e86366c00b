/* request.h: the first pass over a get request, and the calls that both kernel paths share.
 *
 * The XDP program and the TC program answer the same requests from the same maps with the same
 * checks and bytes; they differ only in how the packet grows and leaves. This file is included
 * once per program type, with
 *
 *   REQ_CTX                          the context type (struct xdp_md or struct __sk_buff),
 *   REQ_FN(name)                     the name of a function for that type,
 *   REQ_STORE_BYTES(ctx, off, p, n)  its store helper (bpf_xdp_store_bytes, bpf_skb_store_bytes),
 *
 * because a global function must take its caller's context type. Everything below the globals
 * works on packet pointers (keys.h, lookup.h, emit.h, reply.h, admit.h) and is shared as is.
 */

#ifndef REQUEST_H_ONCE
#define REQUEST_H_ONCE

#define BATCH 4           /* keys lookup_keys finds, and emit_keys writes, per call */
#define LOOKUP_LAST 0x100 /* lookup_keys: the last key found ended the line */

/* request is what the first pass learned about a request it can answer. */
struct request {
	struct l4_info l4;
	__u32 cmd_off; /* packet offset of the command ("get ...") */
	__u32 cmd_len; /* command bytes, to the end of the datagram */
	__u32 nkeys;   /* keys in the command, each with an entry in scratch.locs */
	__u32 total;   /* the reply's UDP payload: frame header, entries, "END\r\n" */
};

#endif /* REQUEST_H_ONCE */

/* lookup_keys scans and finds up to BATCH keys from key number i on, in one call: calls and
 * returns are dear where returns go through a speculation-safe thunk. A global function, so the
 * verifier checks it once, whatever the caller's state; a batch rather than every remaining key,
 * which would take the verifier past its 1M-instruction limit (TestVerifierBudget). Returns the
 * keys found, plus LOOKUP_LAST when the last of them ended the line, or the first failing key's
 * negative pass reason. */
__noinline int REQ_FN(lookup_keys)(REQ_CTX *ctx, __u32 i)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct scratch *st = get_scratch();
	int ret;

	if (!st)
		return -PASS_INTERNAL;
	for (__u32 j = 0; j < BATCH; j++) {
		if (i + j >= MAX_KEYS)
			return -PASS_TOO_MANY_KEYS;
		ret = find_key(st, i + j, scan_key_in(data, data_end, st));
		if (ret < 0)
			return ret;
		if (ret == 1)
			return (j + 1) | LOOKUP_LAST;
	}
	return BATCH;
}

/* emit_keys writes the entries of keys i to i + BATCH - 1 (those under nkeys, MAX_KEYS at most)
 * of a reply, the first at packet offset pos, in one call (a global function for the reasons
 * lookup_keys is). Returns the offset after them, or -1. */
__noinline int REQ_FN(emit_keys)(REQ_CTX *ctx, __u32 i, __u32 pos, __u32 nkeys)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct scratch *st = get_scratch();
	int ret;

	if (!st || nkeys > MAX_KEYS)
		return -1;
	for (__u32 j = 0; j < BATCH; j++) {
		if (i + j >= nkeys)
			break;
		ret = emit_key_in(data, data_end, st, i + j, pos, i + j + 1 == nkeys);
		if (ret < 0)
			return -1;
		pos += ret;
	}
	return pos;
}

/* restore_key writes key i of the request at pos (from its entry, which matched it exactly) and
 * returns its length, or -1. Used only to put a request back after a failed reply. */
__noinline int REQ_FN(restore_key)(REQ_CTX *ctx, __u32 i, __u32 pos)
{
	struct scratch *st = get_scratch();
	struct entry_hdr *e;
	__u64 n;

	if (!st)
		return -1;
	e = entry_at(st->locs[i & (MAX_KEYS - 1)]);
	if (!e)
		return -1;
	n = e->key_len;
	if (!in_range(n, 1, KEY_MAX))
		return -1;
	return REQ_STORE_BYTES(ctx, pos, (__u8 *)(e + 1) + 6, n) ? -1 : (int)n;
}

/* meta_flag reads flag i of an mg (meta.h), in one call: a global function, so that the verifier
 * checks it once however many flags come before it. */
__noinline int REQ_FN(meta_flag)(REQ_CTX *ctx, __u32 i)
{
	struct scratch *st = get_scratch();

	if (!st)
		return -PASS_INTERNAL;
	return meta_flag((void *)(long)ctx->data, (void *)(long)ctx->data_end, st, i);
}

/* meta_pass starts the first pass over an mg (meta.h), the command cmd_len bytes at cmd_off, whose
 * key starts at the scratch's pos: the key scanned, and st->mlast set when no flags follow. The
 * program itself then reads the flags (meta_flag), finds the entry (meta_lookup) and has the header
 * line built (meta_header), which keeps the call stack one deep. A global
 * function, so that the verifier checks it once. It keeps the command to put it back should a
 * helper fail. Returns 0 or a pass reason. */
__noinline int REQ_FN(meta_pass)(REQ_CTX *ctx, __u32 cmd_off, __u32 cmd_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct scratch *st = get_scratch();
	__u64 frame_csum;
	int ret;

	if (!st)
		return PASS_INTERNAL;
	if (cmd_len > MREQ_MAX)
		return PASS_META_FLAGS;
	frame_csum = st->csum;
	if (save_request(data, data_end, st, cmd_off, cmd_len))
		return PASS_MALFORMED;
	ret = meta_key(data, data_end, st, cmd_off);
	if (ret < 0)
		return -ret;
	st->mframe_csum = frame_csum;
	st->mlast = ret;
	return 0;
}

/* meta_lookup finds the mg's entry once its flags are read (meta.h), in one call. Returns 0 or a
 * pass reason. */
__noinline int REQ_FN(meta_lookup)(REQ_CTX *ctx)
{
	struct scratch *st = get_scratch();

	if (!st)
		return PASS_INTERNAL;
	return meta_lookup((void *)(long)ctx->data, (void *)(long)ctx->data_end, st);
}

/* emit_meta writes an mg reply's payload at pos (meta.h), in one call. Returns 0 or -1. */
__noinline int REQ_FN(emit_meta)(REQ_CTX *ctx, __u32 pos)
{
	struct scratch *st = get_scratch();

	if (!st)
		return -1;
	return emit_meta((void *)(long)ctx->data, (void *)(long)ctx->data_end, st, pos);
}

/* first_pass decides whether the request in ctx can be answered, without touching the packet:
 * one whole datagram, a get or gets in canonical form ("get k1 k2\r\n", single spaces) or an mg
 * (meta.h), every
 * key with a live entry, the reply within one datagram and the MTU, no more than
 * cfg_max_amp_x16/16 times the request, the source allowed and within its rate. It fills rq, and
 * the scratch with each key's entry and the reply's payload sum. Returns 0, or the pass reason. */
static __always_inline int REQ_FN(first_pass)(REQ_CTX *ctx, struct scratch **stp,
					       struct request *rq)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct l4_info l4 = {};
	struct scratch *st;
	struct mc_frame *fr;
	__u32 cmd_off, cmd_len, prefix_len, nkeys, total, ip_hdr;
	int ret;

	ret = parse_udp(data, data_end, cfg_port, &l4);
	if (ret)
		return ret;
	if (l4.payload_len < FRAME_LEN + 7) /* frame header and "get k\r\n" */
		return l4.payload_len < FRAME_LEN ? PASS_NOT_FRAMED : PASS_NOT_GET;
	if (l4.payload_len > MAX_PAYLOAD)
		return PASS_TOO_BIG;

	fr = data + ((l4.l4_off + sizeof(struct udphdr)) & 0xff);
	if ((void *)(fr + 1) > data_end)
		return PASS_MALFORMED;
	/* memcached reads a request only from a datagram whose frame says "1 datagram" and ignores
	 * the sequence number and the reserved bytes (clients set them: libmemcached's memcaslap
	 * puts 1 in the reserved field); the reply's frame is the request id, seq 0 of 1, 0. */
	if (fr->total != bpf_htons(1))
		return PASS_NOT_FRAMED;

	st = get_scratch();
	if (!st)
		return PASS_INTERNAL;
	*stp = st;

	cmd_off = l4.l4_off + sizeof(struct udphdr) + FRAME_LEN;
	cmd_len = l4.payload_len - FRAME_LEN;
	{
		__u8 *c = data + (cmd_off & 0xff);

		if ((void *)(c + 5) > data_end)
			return PASS_MALFORMED;
		st->gets = 0;
		st->meta = 0;
		if (c[0] == 'm' && c[1] == 'g' && c[2] == ' ') {
			st->meta = 1;
			prefix_len = 3;
		} else if (c[0] != 'g' || c[1] != 'e' || c[2] != 't') {
			return PASS_NOT_GET;
		} else if (c[3] == ' ') {
			prefix_len = 4;
		} else if (c[3] == 's' && c[4] == ' ') {
			st->gets = 1;
			prefix_len = 5;
		} else {
			return PASS_NOT_GET;
		}
	}
	/* One path from here on, whatever the headers and the command were. */
	l4.l3_off = launder(st, l4.l3_off);
	l4.l4_off = launder(st, l4.l4_off);
	l4.ipv6 = launder(st, l4.ipv6) & 1;
	prefix_len = launder(st, prefix_len);
	if (l4.l3_off < 14 || l4.l3_off > 18 || l4.l4_off <= l4.l3_off || l4.l4_off > 58 ||
	    !in_range(prefix_len, 3, 5))
		return PASS_INTERNAL;
	cmd_off = l4.l4_off + sizeof(struct udphdr) + FRAME_LEN;
	st->pos = cmd_off + prefix_len;
	st->end = cmd_off + cmd_len;
	st->now_ns = 0;
	st->coarse_ns = 0;
	st->out_len = 0;
	st->csum = bpf_ntohs(fr->request_id) + 1; /* frame header words: id, seq 0, total 1, 0 */

	if (st->meta) {
		/* One call checks the whole mg and builds its header line (meta.h). */
		ret = REQ_FN(meta_pass)(ctx, cmd_off, cmd_len);
		if (ret)
			return ret;
		ret = st->mlast ? 1 : 0;
		for (__u32 i = 0; ret == 0 && i <= MAX_META_FLAGS; i++)
			ret = REQ_FN(meta_flag)(ctx, i);
		if (ret < 0)
			return -ret;
		if (ret != 1)
			return PASS_META_FLAGS;
		ret = REQ_FN(meta_lookup)(ctx);
		if (ret)
			return ret;
		ret = meta_header(st->locs[0]);
		if (ret)
			return ret;
		nkeys = 1;
		goto checked;
	}
	/* The first key is scanned and found inline, so a single-key get, the common case, makes
	 * no function call before the reply grows. The keys after it go through lookup_keys, BATCH
	 * to a call. */
	ret = find_key(st, 0, scan_key_in(data, data_end, st));
	if (ret < 0)
		return -ret;
	nkeys = 1;
	/* Calls enough for MAX_KEYS - 1 more keys; lookup_keys refuses a key past MAX_KEYS. */
	for (__u32 b = 0; ret == 0 && b < (MAX_KEYS + BATCH - 2) / BATCH; b++) {
		ret = REQ_FN(lookup_keys)(ctx, nkeys);
		if (ret < 0) {
			/* A key that misses after others were found: a partial multi-get. */
			if (ret == -PASS_MISS || ret == -PASS_EXPIRED || ret == -PASS_FLUSHED)
				return PASS_PARTIAL;
			return -ret;
		}
		nkeys += ret & (LOOKUP_LAST - 1);
		ret = ret & LOOKUP_LAST ? 1 : 0;
	}
	if (ret != 1)
		return PASS_TOO_MANY_KEYS;
checked:
	nkeys = launder(st, nkeys); /* one count, not one constant per count */
	if (nkeys == 0 || nkeys > MAX_KEYS)
		return PASS_INTERNAL;
	/* The line must end exactly where the datagram does: nothing pipelined after it. */
	if (st->pos != cmd_off + cmd_len)
		return PASS_MALFORMED;

	total = FRAME_LEN + st->out_len + (st->meta ? 0 : END_LEN);
	ip_hdr = l4.ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	if (total > MAX_PAYLOAD || ip_hdr + sizeof(struct udphdr) + total > cfg_mtu)
		return PASS_TOO_BIG;
	/* Not a reflector (docs/DESIGN.md invariant 7): bounded amplification, allowed sources only,
	 * each within its rate. */
	if ((__u64)total * 16 > (__u64)l4.payload_len * cfg_max_amp_x16)
		return PASS_AMPLIFICATION;
	ret = admit_source(data, data_end, &l4, st);
	if (ret)
		return ret;
	if (!st->meta)
		st->csum += csum_at(END_CSUM, FRAME_LEN + st->out_len);

	rq->l4 = l4;
	rq->cmd_off = cmd_off;
	rq->cmd_len = cmd_len;
	rq->nkeys = nkeys;
	rq->total = total;
	return 0;
}

/* write_entries writes every key's entry into the reply, from the command's offset on. A
 * single-key reply is written inline (no call); several keys BATCH to a call. The packet must
 * already have the reply's length. Returns 0 or -1. */
static __always_inline int REQ_FN(write_entries)(REQ_CTX *ctx, struct scratch *st,
						  const struct request *rq)
{
	__u32 pos = rq->cmd_off;
	int ret;

	if (st->meta)
		return REQ_FN(emit_meta)(ctx, pos);
	if (rq->nkeys == 1)
		return emit_key_in((void *)(long)ctx->data, (void *)(long)ctx->data_end, st, 0, pos,
				   1) < 0 ? -1 : 0;
	for (__u32 b = 0; b < MAX_KEYS / BATCH; b++) {
		if (b * BATCH >= rq->nkeys)
			break;
		ret = REQ_FN(emit_keys)(ctx, b * BATCH, pos, rq->nkeys);
		if (ret < 0)
			return -1;
		pos = ret;
	}
	return 0;
}

/* restore_command rewrites the command from the keys' entries, which matched them exactly, after
 * a failed reply: the packet has its request's length again, and gets its bytes back. Returns
 * 0 or -1. */
static __always_inline int REQ_FN(restore_command)(REQ_CTX *ctx, struct scratch *st,
						    const struct request *rq)
{
	__u32 pos, cmd_off = rq->cmd_off, nkeys = rq->nkeys;
	__u64 n = st->mreq_len;
	int ret;

	if (st->meta)
		return in_range(n, 8, MREQ_MAX) && !REQ_STORE_BYTES(ctx, cmd_off, st->mreq, n) ? 0 : -1;

	/* Constant lengths: the verifier needs a bounded size on the register passed. */
	if (st->gets ? REQ_STORE_BYTES(ctx, cmd_off, "gets ", 5) :
		       REQ_STORE_BYTES(ctx, cmd_off, "get ", 4))
		return -1;
	pos = cmd_off + (st->gets ? 5 : 4);
	for (__u32 i = 0; i < MAX_KEYS; i++) {
		if (i >= nkeys)
			break;
		ret = REQ_FN(restore_key)(ctx, i, pos);
		if (ret < 0)
			return -1;
		pos += ret;
		REQ_STORE_BYTES(ctx, pos, i + 1 == nkeys ? "\r\n" : " ", i + 1 == nkeys ? 2 : 1);
		pos += i + 1 == nkeys ? 2 : 1;
	}
	return 0;
}
