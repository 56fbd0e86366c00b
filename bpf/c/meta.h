/* meta.h: answering meta gets, "mg <key> <flag>*\r\n", with the flags clients read with.
 *
 * The reply is "VA <bytes> <flags>\r\n<value>\r\n" when v is asked for, else "HD <flags>\r\n";
 * the returned flags come in request order with the values the server gives them: f the client
 * flags, c the CAS unique, k the key, s the value's size, t -1 (items that never expire only: a
 * remaining TTL is the server's clock's to say), O the opaque echoed; v and q return nothing; b
 * says the key is base64 (decoded here; k then returns it encoded, and b). Any other flag (h, l,
 * N, R, T, u, E...), a flag twice, more than MAX_META_FLAGS flags or an item that carries
 * meta-protocol state (META_MG unset) passes to the server.
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
#define MF_B 0x100

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
	case 'b': return MF_B;
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
	__u64 len, hl, kl, cl, sl, fl, szoff, casoff, fkoff, x, sum = 0, toks, kpos, klen;
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
	kpos = st->mkey_off;
	klen = st->mkey_len;
	if (!in_range(kpos, 3, MREQ_BUF - 264) || !in_range(klen, 1, KEY_MAX))
		return PASS_INTERNAL;

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
		} else if (x == 'k' && (seen & MF_B)) {
			/* The token as the request had it, which decode_key found canonical: the
			 * server's re-encoding of the key. */
			o = mput2(st, o, ' ', 'k');
			o = mput(st, o, st->mreq + kpos, klen, 32);
			o = mput2(st, o, ' ', 'b');
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

/* meta_key scans the mg's key, which starts at st->pos, and records where it is; the lookup waits
 * for the flags, since b says the key is base64 (meta_lookup). Returns 1 when the key ended the
 * line, 0 when flags follow, or a negative pass reason. */
static __always_inline int meta_key(void *data, void *data_end, struct scratch *st, __u32 cmd_off)
{
	__u32 pos = st->pos;
	int n;

	n = scan_key_in(data, data_end, st);
	if (n < 0)
		return n;
	st->mkey_pos = pos;
	st->mkey_off = pos - cmd_off;
	st->mkey_len = n & 0xffff;
	st->mtoks = 0;
	st->mseen = 0;
	st->mntok = 0;
	st->mopq_len = 0;
	return n & SCAN_CRLF ? 1 : 0;
}

/* b64_plus1 maps a base64 character to its value plus one, anything else to 0. */
static const __u8 b64_plus1[256] = {
	['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8, ['I'] =
	9, ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, ['Q'] =
	17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24, ['Y'] =
	25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] =
	33, ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] =
	41, ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] =
	49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] =
	57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64
};

/* b64_group decodes the four characters at k + i into three bytes at k + out (in place: out <= i)
 * without a branch, and returns nonzero if any character was not base64. */
static __always_inline __u32 b64_group(__u8 *k, __u32 i, __u32 out)
{
	__u32 t0 = b64_plus1[k[i & 0xff]], t1 = b64_plus1[k[(i + 1) & 0xff]];
	__u32 t2 = b64_plus1[k[(i + 2) & 0xff]], t3 = b64_plus1[k[(i + 3) & 0xff]];
	__u32 v0 = (t0 - 1) & 63, v1 = (t1 - 1) & 63, v2 = (t2 - 1) & 63, v3 = (t3 - 1) & 63;

	k[out & 0xff] = (v0 << 2) | (v1 >> 4);
	k[(out + 1) & 0xff] = ((v1 & 15) << 4) | (v2 >> 2);
	k[(out + 2) & 0xff] = ((v2 & 3) << 6) | v3;
	return ((t0 - 1) | (t1 - 1) | (t2 - 1) | (t3 - 1)) & 0x80000000;
}

/* decode_key decodes the n base64 characters in st->key in place and hashes the result as
 * scan_key_in hashes a key. Only the canonical encoding is taken (padding as the server writes it,
 * unused bits zero), because the reply's k returns the key re-encoded: any other would differ.
 * Returns the key's length, or a negative pass reason. */
static __always_inline int decode_key(struct scratch *st, __u32 n)
{
	__u8 *k = (__u8 *)st->key;
	__u32 out = 0, groups = n / 4, bad = 0, i, t2, t3, v1, v2;
	__u64 h = HASH_SEED;

	if (n == 0 || n % 4 || n > 248)
		return -PASS_META_FLAGS;
	/* Every group but the last: no padding. */
	for (__u32 g = 0; g < 61; g++) {
		if (g + 1 >= groups)
			break;
		bad |= b64_group(k, g * 4, out);
		out += 3;
	}
	/* The last group: "xx==" is one byte, "xxx=" two, and the bits after them must be 0. */
	i = (groups - 1) * 4;
	t2 = k[(i + 2) & 0xff];
	t3 = k[(i + 3) & 0xff];
	v1 = (b64_plus1[k[(i + 1) & 0xff]] - 1) & 63;
	v2 = (b64_plus1[t2] - 1) & 63;
	if (t2 == '=' && t3 == '=') {
		k[(i + 2) & 0xff] = 'A';
		k[(i + 3) & 0xff] = 'A';
		bad |= b64_group(k, i, out) | (v1 & 15);
		out += 1;
	} else if (t3 == '=') {
		k[(i + 3) & 0xff] = 'A';
		bad |= b64_group(k, i, out) | (v2 & 3);
		out += 2;
	} else {
		bad |= b64_group(k, i, out);
		out += 3;
	}
	if (bad || out > KEY_MAX)
		return -PASS_META_FLAGS;
	/* Zeros after the key in its last word, as scan_key_in leaves them, then the same hash. */
	for (__u32 j = 0; j < 8; j++) {
		if ((out + j) % 8 == 0)
			break;
		k[(out + j) & 0xff] = 0;
	}
	for (__u32 w = 0; w < KEY_WORDS; w++) {
		if (w * 8 >= out)
			break;
		h = hash_word(h, st->key[w]);
	}
	st->hash = hash_final(h, out);
	return out;
}

/* meta_lookup finds the entry for the mg's key, scanned again from st->mkey_pos (the flags'
 * scans took the scratch's key) and decoded when b is set, and checks that mg may be answered
 * from it. Returns 0 or a pass reason. */
static __always_inline int meta_lookup(void *data, void *data_end, struct scratch *st)
{
	struct entry_hdr *e;
	__u32 pos = st->pos;
	int n, ret;

	st->pos = st->mkey_pos;
	n = scan_key_in(data, data_end, st);
	st->pos = pos;
	if (n < 0)
		return -n;
	n &= 0xffff;
	if (st->mseen & MF_B) {
		n = decode_key(st, n);
		if (n < 0)
			return -n;
	}
	ret = find_key(st, 0, n);
	if (ret < 0)
		return -ret;
	e = entry_at(st->locs[0]);
	if (!e)
		return PASS_INTERNAL;
	if (!(e->meta & META_MG))
		return PASS_META_FLAGS;
	/* t returns the remaining TTL: only "never" (-1) is the kernel's to say. */
	if ((st->mseen & MF_T) && e->expires_ns)
		return PASS_META_FLAGS;
	return 0;
}

/* meta_flag reads flag i of an mg at st->pos: a token like a key (scan_key_in), one letter, or O
 * and its opaque, recorded in the scratch. Returns 1 when it ended the line, 0 when another
 * follows, or a negative pass reason. */
static __always_inline int meta_flag(void *data, void *data_end, struct scratch *st, __u32 i)
{
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
