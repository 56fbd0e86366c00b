/* meta.h: answering meta gets, "mg <key> <flag>*\r\n", with the flags clients read with.
 *
 * The reply is "VA <bytes> <flags>\r\n<value>\r\n" when v is asked for, else "HD <flags>\r\n";
 * the returned flags come in request order with the values the server gives them: f the client
 * flags, c the CAS unique, k the key, s the value's size, t -1 (items that never expire only: a
 * remaining TTL is the server's clock's to say), O the opaque echoed; v and q return nothing. Any
 * other flag (b, h, l, N, R, T, u, E...), a flag twice, more than MAX_META_FLAGS flags or an item
 * that carries meta-protocol state (META_MG unset) passes to the server.
 *
 * The header line is built in the scratch from the entry's own texts (key, flags, size, CAS) and
 * summed there; the value part is the entry's "\r\n<value>\r\n" with its precomputed sum.
 */
#pragma once

#include "common.h"
#include "counters.h"
#include "csum.h"
#include "cache_maps.h"
#include "keys.h"
#include "lookup.h"
#include "copy.h"

#define MAX_META_FLAGS 8

/* Flag bits for the seen-set, and the order they are reported in is the request's. */
#define MF_V 0x01
#define MF_F 0x02
#define MF_T 0x04
#define MF_C 0x08
#define MF_K 0x10
#define MF_S 0x20
#define MF_Q 0x40
#define MF_O 0x80

static __always_inline __u32 meta_flag_bit(__u8 c)
{
	switch (c) {
	case 'v': return MF_V;
	case 'f': return MF_F;
	case 't': return MF_T;
	case 'c': return MF_C;
	case 'k': return MF_K;
	case 's': return MF_S;
	case 'q': return MF_Q;
	case 'O': return MF_O;
	}
	return 0;
}

/* mput copies n (0..WORDS * 8) bytes from src to the header line at off: WORDS 8-byte words,
 * whatever n, so the verifier sees straight-line code. Bytes past n are overwritten by the next
 * piece or left out by the line's length. src must have WORDS * 8 readable bytes (an entry in its
 * page, the scratch). Returns the offset after the piece, or -1. */
#define mput(st, off, src, n, WORDS)                                                   \
	({                                                                              \
		__u64 o_ = (off), m_ = (n);                                             \
		int r_ = -1;                                                            \
		if (in_range(o_, 0, MHDR_MAX) && in_range(m_, 0, (WORDS) * 8)) {        \
			_Pragma("unroll") for (int w_ = 0; w_ < (WORDS); w_++)          \
				*(__u64 *)((st)->mhdr + o_ + w_ * 8) =                  \
					*(const __u64 *)((src) + w_ * 8);               \
			r_ = (int)(o_ + m_);                                            \
		}                                                                       \
		r_;                                                                     \
	})

/* mput2 writes the two bytes a, b at off. Returns off + 2, or -1. */
static __always_inline int mput2(struct scratch *st, __u32 off, __u8 a, __u8 b)
{
	__u64 o = off;

	if (!in_range(o, 0, MHDR_MAX))
		return -1;
	st->mhdr[o] = a;
	st->mhdr[o + 1] = b;
	return (int)(o + 2);
}

/* save_request keeps the command (n bytes at packet offset off, ending the datagram) in
 * st->mreq, in 8-byte words, the last one overlapping: the frame header precedes the command, so
 * the 8 bytes before its end are in the packet. Returns 0 or -1. */
static __always_inline int save_request(void *data, void *data_end, struct scratch *st, __u32 off,
					__u32 n)
{
	__u64 o = off, m = n, last;
	__u8 *p;

	if (!in_range(o, 14, 128) || !in_range(m, 8, MREQ_MAX))
		return -1;
	for (__u32 w = 0; w < MREQ_MAX / 8; w++) {
		if (w * 8 + 8 > m)
			break;
		p = data + o + w * 8;
		if ((void *)(p + 8) > data_end)
			return -1;
		*(__u64 *)(st->mreq + w * 8) = *(__u64 *)p;
	}
	last = m - 8;
	if (!in_range(last, 0, MREQ_MAX - 8))
		return -1;
	p = data + o + last;
	if ((void *)(p + 8) > data_end)
		return -1;
	*(__u64 *)(st->mreq + last) = *(__u64 *)p;
	st->mreq_len = m;
	return 0;
}

/* meta_header builds the header line of the mg reply the scratch describes (its entry at arena
 * offset loc, its flags in mtoks, mseen and mopq) and sums it: st->out_len, st->csum (from mframe_csum),
 * mhdr_len and mtail. A global function, shared by both programs: the verifier checks it once.
 * Returns 0 or a pass reason. */
__noinline int meta_header(__u32 loc)
{
	struct scratch *st = get_scratch();
	struct entry_hdr *e;
	const __u8 *ed;
	__u64 len, hl, kl, cl, sl, fl, szoff, casoff, fkoff, x, sum = 0, toks;
	__u32 meta, seen, ntok, opq;
	int o;

	if (!st)
		return PASS_INTERNAL;
	e = entry_at(loc);
	if (!e)
		return PASS_INTERNAL;
	ed = (const __u8 *)(e + 1);
	meta = e->meta;
	len = e->len;
	hl = e->hdr_len;
	kl = e->key_len;
	cl = e->cas_len;
	sl = META_SIZE_LEN(meta);
	fl = META_FLAGS_LEN(meta);
	szoff = hl - sl;
	casoff = len + END_LEN + hl + 1;
	fkoff = 7 + kl;
	/* Bounded on the registers the copies use: the texts lie in the entry, and every copy's
	 * words stay inside its page's guard. */
	if (!in_range(len, 1, DATA_MAX) || !in_range(hl, 1, GETS_HEAD_MAX - CAS_MAX) || hl >= len ||
	    !in_range(kl, 1, KEY_MAX) || !in_range(cl, 2, CAS_MAX) || !in_range(sl, 1, 4) ||
	    !in_range(fl, 1, 10) || hl != 8 + kl + fl + sl || !in_range(szoff, 1, 300) ||
	    !in_range(casoff, 1, 1700) || !in_range(fkoff, 8, 7 + KEY_MAX))
		return PASS_INTERNAL;
	toks = st->mtoks;
	seen = st->mseen;
	ntok = st->mntok;
	opq = st->mopq_len;

	/* "VA <bytes>" or "HD", then the flags in request order. */
	if (seen & MF_V) {
		o = mput2(st, 0, 'V', 'A');
		o = mput2(st, o, ' ', ' ');
		o = mput(st, o - 1, ed + szoff, sl, 1);
	} else {
		o = mput2(st, 0, 'H', 'D');
	}
	for (__u32 i = 0; i < MAX_META_FLAGS; i++) {
		if (i >= ntok || o < 0)
			break;
		o = launder(st, o); /* one offset, not one per combination of flags so far */
		x = (toks >> (8 * i)) & 0xff;
		if (x == 'f') {
			o = mput2(st, o, ' ', 'f');
			o = mput(st, o, ed + fkoff, fl, 2);
		} else if (x == 'c') {
			o = mput2(st, o, ' ', 'c');
			o = mput(st, o, ed + casoff, cl - 1, 3);
		} else if (x == 'k') {
			o = mput2(st, o, ' ', 'k');
			o = mput(st, o, ed + 6, kl, 32);
		} else if (x == 's') {
			o = mput2(st, o, ' ', 's');
			o = mput(st, o, ed + szoff, sl, 1);
		} else if (x == 't') {
			o = mput2(st, o, ' ', 't');
			o = mput2(st, o, '-', '1');
		} else if (x == 'O') {
			o = mput2(st, o, ' ', 'O');
			o = mput(st, o - 1, st->mopq, opq, MOPQ_MAX / 8);
		}
	}
	/* With v, the entry's "\r\n<value>\r\n" ends the line; without, "\r\n" does. */
	if (!(seen & MF_V))
		o = mput2(st, o, '\r', '\n');
	if (o < 0 || o > MHDR_MAX)
		return PASS_META_FLAGS;
	/* Zeros after the line, so the last word's sum counts only its bytes. */
	*(__u64 *)(st->mhdr + (o & 0x1ff)) = 0;
	for (__u32 w = 0; w < MHDR_MAX / 8 + 1; w++) {
		if (w * 8 >= (__u32)o)
			break;
		x = *(__u64 *)(st->mhdr + w * 8);
		sum += (x & 0xffffffff) + (x >> 32);
	}
	/* Summed as loaded (little-endian): swapped, it is the big-endian sum csum_at takes. */
	x = csum_fold(sum);
	x = ((x >> 8) | (x << 8)) & 0xffff;
	st->csum = st->mframe_csum + csum_at(x, FRAME_LEN);
	st->mhdr_len = o;
	st->mtail = (seen & MF_V) ? 1 : 0;
	st->out_len = o;
	if (st->mtail) {
		st->csum += csum_at(e->csum_tail, FRAME_LEN + o);
		st->out_len += len - hl;
	}
	return 0;
}

/* meta_key finds the entry for the mg's key, which starts at st->pos, and checks that mg may be
 * answered from it. Returns 1 when the key ended the line, 0 when flags follow, or a negative
 * pass reason. */
static __always_inline int meta_key(void *data, void *data_end, struct scratch *st)
{
	struct entry_hdr *e;
	int ret;

	ret = find_key(st, 0, scan_key_in(data, data_end, st));
	if (ret < 0)
		return ret;
	e = entry_at(st->locs[0]);
	if (!e)
		return -PASS_INTERNAL;
	if (!(e->meta & META_MG))
		return -PASS_META_FLAGS;
	st->mtoks = 0;
	st->mseen = 0;
	st->mntok = 0;
	st->mopq_len = 0;
	return ret;
}

/* meta_flag reads flag i of an mg at st->pos: a token like a key (scan_key_in), one letter, or O
 * and its opaque, recorded in the scratch. Returns 1 when it ended the line, 0 when another
 * follows, or a negative pass reason. */
static __always_inline int meta_flag(void *data, void *data_end, struct scratch *st, __u32 i)
{
	struct entry_hdr *e;
	__u32 bit, seen = st->mseen;
	__u64 x;
	int n, last;

	if (i >= MAX_META_FLAGS)
		return -PASS_META_FLAGS;
	n = scan_key_in(data, data_end, st);
	if (n < 0)
		return n;
	last = n & SCAN_CRLF ? 1 : 0;
	n &= 0xffff;
	x = st->key[0] & 0xff;
	bit = meta_flag_bit(x);
	if (!bit || (seen & bit) || (bit != MF_O && n != 1) || n > MOPQ_MAX)
		return -PASS_META_FLAGS;
	if (bit == MF_T) {
		/* t returns the remaining TTL: only "never" (-1) is the kernel's to say. */
		e = entry_at(st->locs[0]);
		if (!e || e->expires_ns)
			return -PASS_META_FLAGS;
	}
	if (bit == MF_O) {
#pragma unroll
		for (int w = 0; w < MOPQ_MAX / 8; w++)
			*(__u64 *)(st->mopq + w * 8) = st->key[w];
		st->mopq_len = n;
	}
	st->mseen = seen | bit;
	st->mtoks |= x << (8 * (i & 7));
	st->mntok = i + 1;
	return last;
}

/* emit_meta writes an mg reply's payload at packet offset pos: the header line, then the value
 * part when asked for. Returns 0 or -1. */
static __always_inline int emit_meta(void *data, void *data_end, struct scratch *st, __u32 pos)
{
	struct entry_hdr *e;
	__u64 hlen = st->mhdr_len, len, hl;

	if (!in_range(hlen, 2, MHDR_MAX))
		return -1;
	if (copy_piece(data, data_end, pos, st->mhdr, hlen))
		return -1;
	if (!st->mtail)
		return 0;
	e = entry_at(st->locs[0]);
	if (!e)
		return -1;
	len = e->len;
	hl = e->hdr_len;
	if (!in_range(len, 1, DATA_MAX) || !in_range(hl, 1, GETS_HEAD_MAX - CAS_MAX) || hl >= len)
		return -1;
	return copy_piece(data, data_end, pos + hlen, (const __u8 *)(e + 1) + hl, len - hl);
}
