//go:build ignore

/* cache.c: the XDP program that answers memcached UDP get/gets hits from the kernel cache.
 *
 * A request is answered only when it is one whole datagram (frame seq 0 of 1), a get or gets in
 * canonical form ("get k1 k2\r\n", single spaces), every key has a live entry, the
 * reply fits one datagram and the MTU, it is no more than cfg_max_amp_x16/16 times the request,
 * the source is allowed and within its rate. The first pass finds every key and sums the reply's
 * size and checksum without touching the packet; only once every check has passed is the packet
 * resized and written, so nothing needs saving. Anything else returns XDP_PASS with the packet as
 * it came.
 *
 * Keys are scanned, validated and hashed 8 bytes at a time (SWAR); every map lookup on the hit
 * path is an inlined ARRAY lookup (see cache_maps.h); entries are copied into the reply with
 * inline word stores, a get's in one piece (END included for the last key), a gets entry in two.
 */

#include "common.h"
#include "counters.h"
#include "csum.h"
#include "parsing.h"
#include "cache_maps.h"
#include "copy.h"

_Static_assert(DATA_MAX + END_LEN <= COPY_LIMIT, "an entry's piece must fit copy_piece");

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Unused pointers that put these types in BTF, so bpf2go generates their Go mirrors. */
const enum counter *unused_counter __attribute__((unused));
const struct counter_set *unused_counter_set __attribute__((unused));
const struct entry_hdr *unused_entry_hdr __attribute__((unused));

/* The key hash, mirrored by keyHash in entry.go: per 8-byte little-endian word (the last one
 * zero-padded) h = (h ^ w) * P1, h ^= h >> 29; then the length and a final mix. */
#define HASH_SEED 0x243F6A8885A308D3ULL
#define HASH_P1 0x9E3779B97F4A7C15ULL
#define HASH_P2 0xFF51AFD7ED558CCDULL
#define HASH_P3 0xC4CEB9FE1A85EC53ULL

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Sum of "END\r\n" as big-endian words from an even offset. */
#define END_CSUM (0x454E + 0x440D + 0x0A00)

#define SCAN_CRLF 0x10000 /* scan_key: the key ended the line */
#define BATCH 4             /* keys lookup_keys finds, and emit_keys writes, per call */
#define LOOKUP_LAST 0x100   /* lookup_keys: the last key found ended the line */

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch_map, &zero);
}

/* launder returns v read back through this CPU's scratch memory, which makes it one unknown
 * value to the verifier. Where paths that differ only in constants meet (VLAN or not, IPv4 or
 * IPv6, get or gets, one exit per loop iteration, one key count per request) it lets the verifier
 * check what follows once instead of once per combination, which keeps the program far from
 * the 1M-instruction limit. Every use is followed by the bounds checks the value needs. */
static __always_inline __u32 launder(struct scratch *st, __u32 v)
{
	st->launder = v;
	return *(volatile __u32 *)&st->launder;
}

static __always_inline __u64 hash_word(__u64 h, __u64 w)
{
	h = (h ^ w) * HASH_P1;
	return h ^ (h >> 29);
}

/* hash_final mixes in the length and finishes with murmur3's fmix64, so every output bit depends
 * on every input bit (the index and the admission sketch both use low and high bits). */
static __always_inline __u64 hash_final(__u64 h, __u32 n)
{
	h ^= n;
	h ^= h >> 33;
	h *= HASH_P2;
	h ^= h >> 33;
	h *= HASH_P3;
	return h ^ (h >> 33);
}

/* has_byte sets bit 7 of the bytes of w equal to c. The lowest flagged byte is always a real
 * match: a borrow can flag bytes above a match, never below one. */
static __always_inline __u64 has_byte(__u64 w, __u64 c)
{
	__u64 x = w ^ (c * ONES);

	return (x - ONES) & ~x & HIGHS;
}

/* key_end flags the bytes of w that end a key as memcached splits a line: a space, or the "\r"
 * or "\n" of the line end. Every other byte, control and 8-bit bytes included, belongs to the
 * key, as memcached and the Go server accept it. Only the lowest flag is exact (has_byte). */
static __always_inline __u64 key_end(__u64 w)
{
	return has_byte(w, ' ') | has_byte(w, '\r') | has_byte(w, '\n');
}

/* first_byte is the index of the lowest byte flagged in m (bit 7 of bytes only, m != 0). */
static __always_inline __u32 first_byte(__u64 m)
{
	__u64 b = (m & -m) >> 7;

	return (__u32)((b * 0x0102030405060708ULL) >> 56) - 1;
}

/* tail_word reads the payload bytes from off up to end (fewer than 8) as the low bytes of a word,
 * spaces (a key's end) above them. It reads the 8 bytes that end at end, which lie in the packet
 * because the frame header precedes the command. Bytes past end (link padding) are never read. */
static __always_inline int tail_word(void *data, void *data_end, __u32 off, __u32 end, __u64 *w)
{
	__u32 start, have;
	__u8 *p;

	if (off >= end || end - off >= 8 || end < 8 + FRAME_LEN)
		return -1;
	start = end - 8;
	barrier_var(start); /* or clang adds -8 to the packet pointer, which the verifier refuses */
	p = data + start;
	if ((void *)(p + 8) > data_end)
		return -1;
	have = (end - off) * 8;
	*w = (*(__u64 *)p >> (64 - have)) | ((' ' * ONES) << have);
	return 0;
}

/* entry_at returns the entry at arena offset loc, or NULL. */
static __always_inline struct entry_hdr *entry_at(__u32 loc)
{
	__u32 page = loc >> PAGE_SHIFT_ARENA, in = loc & (PAGE_BYTES - 1);
	struct arena_page *pg = bpf_map_lookup_elem(&arena, &page);

	if (!pg)
		return NULL;
	return (struct entry_hdr *)(pg->b + in);
}

/* slot_loc returns the arena offset s points at if it holds hash h, or -1. Each word is read
 * once (volatile), the hash first, as cache_maps.h describes. */
static __always_inline __s64 slot_loc(struct index_slot *s, __u64 h)
{
	__u64 meta;

	if (*(volatile __u64 *)&s->hash != h)
		return -1;
	meta = *(volatile __u64 *)&s->loc;
	if (!((meta >> 32) & 0xff)) /* used */
		return -1;
	return (__u32)meta;
}

/* find_slot returns the index slot holding hash h, or NULL, and the entry's offset in *loc. */
static __always_inline struct index_slot *find_slot(__u64 h, __u32 *loc)
{
	__u32 i = (__u32)h & cfg_index_mask;
	struct index_slot *s = bpf_map_lookup_elem(&index_map, &i);
	__s64 l;

	if (s && (l = slot_loc(s, h)) >= 0) {
		*loc = l;
		return s;
	}
	i = (__u32)(h >> 32) & cfg_index_mask;
	s = bpf_map_lookup_elem(&index_map, &i);
	if (s && (l = slot_loc(s, h)) >= 0) {
		*loc = l;
		return s;
	}
	return NULL;
}

/* key_matches compares the scanned key (st->key, n bytes) with the entry's, at data[6:]. */
static __always_inline int key_matches(struct scratch *st, const struct entry_hdr *e, __u32 n)
{
	const __u8 *data = (const __u8 *)(e + 1);

	if (e->key_len != n)
		return 0;
	for (__u32 w = 0; w < KEY_WORDS; w++) {
		__u32 off = w * 8;
		__u64 a, b, mask = ~0ULL;

		if (off >= n)
			break;
		a = st->key[w];
		b = *(const __u64 *)(data + 6 + off);
		if (n - off < 8)
			mask = (1ULL << ((n - off) * 8)) - 1; /* little-endian: low bytes first */
		if ((a ^ b) & mask)
			return 0;
	}
	return 1;
}

/* check_entry validates entry e for the scanned key and adds its piece of the reply to the
 * running size and checksum. Returns 0 or a negative pass reason. */
static __always_inline int check_entry(struct scratch *st, const struct entry_hdr *e, __u32 n)
{
	__u64 flushed = flushed_before_ns;
	__u32 off, len = e->len, hl = e->hdr_len, cl = e->cas_len;

	if (e->filled_ns < flushed)
		return -PASS_FLUSHED;
	if (e->expires_ns) {
		/* The clock is read only for entries that expire, once per packet, and the coarse
		 * one (the last tick's time, ~15 ns cheaper here): it lags by at most a tick, which
		 * userspace covers by ending kernel entries expiryMargin early. */
		if (!st->coarse_ns)
			st->coarse_ns = bpf_ktime_get_coarse_ns();
		if (st->coarse_ns >= e->expires_ns)
			return -PASS_EXPIRED;
	}
	/* The same hash for another key, or a slot read while being rewritten: a miss, never
	 * another key's value. */
	if (!key_matches(st, e, n))
		return -PASS_MISS;
	if (len == 0 || len > DATA_MAX || hl >= len || cl == 0 || cl > CAS_MAX)
		return -PASS_INTERNAL;

	off = FRAME_LEN + st->out_len; /* payload offset of this piece */
	if (off > MAX_PAYLOAD)
		return -PASS_TOO_BIG;
	if (st->gets) {
		st->csum += csum_at(e->csum_gets_head, off);
		st->csum += csum_at(e->csum_tail, off + hl + cl);
		st->out_len += len + cl;
	} else {
		st->csum += csum_at(e->csum_data, off);
		st->out_len += len;
	}
	return 0;
}

/* scan_key_in scans the key at st->pos 8 bytes at a time: it validates, copies (st->key) and
 * hashes it (st->hash), and moves st->pos past its delimiter. It returns the key length, ORed with
 * SCAN_CRLF when "\r\n" ended the line, or a negative pass reason. */
static __always_inline int scan_key_in(struct xdp_md *ctx, struct scratch *st)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 h = HASH_SEED;
	__u32 pos, end, n = 0, d;
	int found = 0;
	__u8 *c;

	pos = st->pos;
	end = st->end;
	if (pos > 2048 || end > 2048)
		return -PASS_MALFORMED;
	/* Whole words first; every path out of the loop ends the key (a flagged byte, or fewer
	 * than 8 bytes left), so the verifier walks the loop once, not once per combination. */
	for (__u32 w = 0; w < KEY_WORDS; w++) {
		__u32 off = pos + w * 8;
		__u64 x, bad;
		__u8 *p;

		if (off + 8 > end) {
			if (tail_word(data, data_end, off, end, &x))
				return -PASS_MALFORMED;
			bad = key_end(x); /* never 0: the padding bytes are flagged */
		} else {
			p = data + off;
			if ((void *)(p + 8) > data_end)
				return -PASS_MALFORMED;
			x = *(__u64 *)p;
			bad = key_end(x);
			if (!bad) {
				st->key[w] = x;
				h = hash_word(h, x);
				continue;
			}
		}
		if (bad) {
			__u32 k = first_byte(bad);

			n = w * 8 + k;
			if (k) {
				x &= ~0ULL >> (64 - k * 8);
				st->key[w] = x;
				h = hash_word(h, x);
			}
			found = 1;
		}
		break;
	}
	if (!found)
		return -PASS_KEY_TOO_LONG;
	n = launder(st, n); /* one length, not one range per loop exit */
	if (n > KEY_MAX)
		return -PASS_KEY_TOO_LONG;
	if (n == 0)
		return -PASS_MALFORMED;
	st->hash = hash_final(h, n);

	/* The key ends with one space or with "\r\n"; any other byte is not ours to judge. */
	d = pos + n;
	if (d >= end || d > 4096)
		return -PASS_MALFORMED;
	c = data + d;
	if ((void *)(c + 1) > data_end)
		return -PASS_MALFORMED;
	if (*c == ' ') {
		st->pos = d + 1;
		return n;
	}
	if (*c != '\r' || d + 2 > end || (void *)(c + 2) > data_end || c[1] != '\n')
		return -PASS_MALFORMED;
	st->pos = d + 2;
	return n | SCAN_CRLF;
}

/* find_key finds the entry for the key scan_key just scanned (scanned: its result), checks it
 * is servable and records it in st->locs[i]. Returns 1 when it was the last key of the line, 0
 * when another follows, or a negative pass reason. */
static __always_inline int find_key(struct scratch *st, __u32 i, int scanned)
{
	struct index_slot *s;
	struct entry_hdr *e;
	int err;
	__u32 n, loc;

	if (scanned < 0)
		return scanned;
	n = scanned & 0xffff;
	if (n == 0 || n > KEY_MAX)
		return -PASS_MALFORMED;

	s = find_slot(st->hash, &loc);
	if (!s)
		return -PASS_MISS;
	e = entry_at(loc);
	if (!e || e->loc != loc)
		return -PASS_MISS;
	err = check_entry(st, e, n);
	if (err < 0)
		return err;
	/* Both marks in one test: a hot key's slot is written once per userspace sweep, not on
	 * every hit. */
	if (!s->referenced || !s->fetched) {
		s->referenced = 1;
		s->fetched = 1;
	}
	st->locs[i & (MAX_KEYS - 1)] = loc;
	return scanned & SCAN_CRLF ? 1 : 0;
}

/* lookup_keys scans and finds up to BATCH keys from key number i on, in one call: every
 * call and return costs ~5-10 ns here. A global function, so the verifier checks it once,
 * whatever the caller's state; a batch rather than every remaining key, which would take the
 * verifier past its 1M-instruction limit (a batch of 4 for both lookups and writes keeps the
 * program near 260 K, TestVerifierBudget). Returns the keys found, plus LOOKUP_LAST when the last
 * of them ended the line, or the first failing key's negative pass reason. */
__noinline int lookup_keys(struct xdp_md *ctx, __u32 i)
{
	struct scratch *st = get_scratch();
	int ret;

	if (!st)
		return -PASS_INTERNAL;
	for (__u32 j = 0; j < BATCH; j++) {
		if (i + j >= MAX_KEYS)
			return -PASS_TOO_MANY_KEYS;
		ret = find_key(st, i + j, scan_key_in(ctx, st));
		if (ret < 0)
			return ret;
		if (ret == 1)
			return (j + 1) | LOOKUP_LAST;
	}
	return BATCH;
}

/* emit_key_in writes the entry found for key i at packet offset pos, with "END\r\n" after it when
 * last. Returns the bytes written, END aside, or -1. Entries are immutable and their chunks reused
 * only long after they leave the index, so this is the entry the first pass checked. */
static __always_inline int emit_key_in(struct xdp_md *ctx, struct scratch *st, __u32 i, __u32 pos,
				       __u32 last)
{
	struct entry_hdr *e;
	__u8 *data;
	__u64 len, hl, cl, n, tail, head = 0, dst, from, cnt;

	e = entry_at(st->locs[i & (MAX_KEYS - 1)]);
	if (!e)
		return -1;
	data = (__u8 *)(e + 1);
	len = e->len;
	hl = e->hdr_len;
	cl = e->cas_len;
	if (!in_range(len, 1, DATA_MAX) || !in_range(hl, 1, GETS_HEAD_MAX - CAS_MAX) ||
	    !in_range(cl, 1, CAS_MAX) || hl >= len)
		return -1;
	n = len + (last ? END_LEN : 0);
	if (!in_range(n, 1, DATA_MAX + END_LEN))
		return -1;
	/* A get's entry is one piece. A gets entry is two: the value part, which lands after the
	 * CAS, then the gets header, stored whole before it. One call site for both keeps one copy
	 * of copy_piece's code per emit. */
	dst = pos;
	from = 0;
	cnt = n;
	if (st->gets) {
		tail = n - hl;
		head = hl + cl;
		if (!in_range(tail, 1, DATA_MAX + END_LEN) || !in_range(head, 2, GETS_HEAD_MAX))
			return -1;
		dst = pos + head;
		from = hl;
		cnt = tail;
	}
	for (int piece = 0; piece < 2; piece++) {
		if (copy_piece(ctx, dst, data + from, cnt))
			return -1;
		if (!st->gets || piece)
			break;
		dst = pos;
		from = len + END_LEN;
		cnt = head;
	}
	return (int)(st->gets ? len + cl : len);
}

/* emit_keys writes the entries of keys i to i + BATCH - 1 (those under nkeys, MAX_KEYS at most)
 * of a reply, the first at packet offset pos, in one call (a global function for the reasons
 * lookup_keys is). Returns the offset after them, or -1. */
__noinline int emit_keys(struct xdp_md *ctx, __u32 i, __u32 pos, __u32 nkeys)
{
	struct scratch *st = get_scratch();
	int ret;

	if (!st || nkeys > MAX_KEYS)
		return -1;
	for (__u32 j = 0; j < BATCH; j++) {
		if (i + j >= nkeys)
			break;
		ret = emit_key_in(ctx, st, i + j, pos, i + j + 1 == nkeys);
		if (ret < 0)
			return -1;
		pos += ret;
	}
	return pos;
}

/* restore_key writes key i of the request at pos (from its entry, which matched it exactly) and
 * returns its length, or -1. Used only to put a request back after a failed reply. */
__noinline int restore_key(struct xdp_md *ctx, __u32 i, __u32 pos)
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
	return bpf_xdp_store_bytes(ctx, pos, (__u8 *)(e + 1) + 6, n) ? -1 : (int)n;
}

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

/* swap_macs returns the Ethernet addresses held in a (bytes 0-7) and b (bytes 8-11, as loaded
 * little-endian) with source and destination exchanged, in the same two words. */
static __always_inline void swap_macs(__u64 *a, __u32 *b)
{
	__u64 x = *a;
	__u32 y = *b;

	*a = (x >> 48) | ((__u64)y << 16) | (x << 48);
	*b = (__u32)(x >> 16);
}

/* build_headers writes the reply's headers at the packet's front from the request's headers at
 * offset src (0: in place; the head growth when the reply grew at the head, where the request's
 * headers still are): swapped addresses, new lengths, the reply mark, both checksums and the
 * frame header. Every header word is loaded before any is stored, so the two ranges may overlap,
 * and no load reads bytes just stored in another width (which stalls on store forwarding). The
 * sums add the words as loaded (little-endian) and store the result the same way, which gives
 * the right bytes (RFC 1071 2(B)). All bounds are checked before the first store. */
static __always_inline int build_headers(struct xdp_md *ctx, const struct l4_info *l4, __u32 src,
					 __u32 payload_len, __u64 payload_csum)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = l4->l3_off, l4o = l4->l4_off, ulen = payload_len + sizeof(struct udphdr);
	__u8 dscp = cfg_reply_dscp;
	__u64 so = src, mac0, frame, le;
	__u8 *s, *d = data;
	__u32 mac1, ports, x, sum_be, ip[10];
	__u16 vlan_or_type, c;
	__u32 vlan_tail = 0;

	if ((l3 != 14 && l3 != 18) || (l4o != l3 + 20 && l4o != l3 + 40) ||
	    (l4->ipv6 != 0) != (l4o == l3 + 40) || !in_range(so, 0, HEAD_GROW_MAX))
		return -1;
	s = data + so;
	/* Ethernet (and VLAN), IP, UDP and the frame header, at the source and at the front. */
	__u8 *sl3 = s + (l3 & 0x1f), *dl3 = d + (l3 & 0x1f);
	__u8 *sl4 = s + (l4o & 0x3f), *dl4 = d + (l4o & 0x3f);

	if ((void *)(s + 18) > data_end || (void *)(d + 18) > data_end ||
	    (void *)(sl4 + 16) > data_end || (void *)(dl4 + 16) > data_end ||
	    (void *)(sl3 + 20) > data_end || (void *)(dl3 + 20) > data_end)
		return -1;
	mac0 = *(__u64 *)s;
	mac1 = *(__u32 *)(s + 8);
	vlan_or_type = *(__u16 *)(s + 12);
	if (l3 == 18)
		vlan_tail = *(__u32 *)(s + 14);
	ports = *(__u32 *)sl4;
	/* Request id kept; seq 0, total 1, reserved 0 (little-endian load: total is bytes 4-5). */
	frame = (*(__u64 *)(sl4 + 8) & 0xffff) | (0x0100ULL << 32);
	/* Pseudo-header protocol and length, and the UDP length word (checksum zero). */
	le = (__u64)ports + bpf_htons(ulen) + bpf_htons(IPPROTO_UDP) + bpf_htons(ulen);
	if (l4->ipv6) {
		if ((void *)(sl3 + 40) > data_end || (void *)(dl3 + 40) > data_end)
			return -1;
#pragma unroll
		for (int i = 0; i < 10; i++)
			ip[i] = *(__u32 *)(sl3 + 4 * i);
#pragma unroll
		for (int i = 2; i < 10; i++)
			le += ip[i];
		if (dscp) {
			/* Traffic class: the low 4 bits of byte 0 and the high 4 of byte 1. */
			__u8 b0 = ip[0], b1 = ip[0] >> 8, tc = (b0 << 4) | (b1 >> 4);

			tc = (dscp << 2) | (tc & 3);
			b0 = (b0 & 0xf0) | (tc >> 4);
			b1 = (tc << 4) | (b1 & 0x0f);
			ip[0] = (ip[0] & 0xffff0000) | b0 | ((__u32)b1 << 8);
		}
		/* payload length, next header kept, hop limit 64 */
		ip[1] = bpf_htons(ulen) | (ip[1] & 0x00ff0000) | (64U << 24);
		x = ip[2], ip[2] = ip[6], ip[6] = x;
		x = ip[3], ip[3] = ip[7], ip[7] = x;
		x = ip[4], ip[4] = ip[8], ip[8] = x;
		x = ip[5], ip[5] = ip[9], ip[9] = x;
	} else {
		__u64 ipsum;
		__u8 tos;

#pragma unroll
		for (int i = 0; i < 5; i++)
			ip[i] = *(__u32 *)(sl3 + 4 * i);
		le += (__u64)ip[3] + ip[4];
		tos = ip[0] >> 8;
		if (dscp)
			tos = (dscp << 2) | (tos & 3);
		/* version/IHL kept, TOS, total length; TTL 64, protocol kept, checksum zero for now */
		ip[0] = (ip[0] & 0xff) | ((__u32)tos << 8) | ((__u32)bpf_htons(ulen + 20) << 16);
		ip[2] = (ip[2] & 0xff00) | 64;
		/* Recomputed, not updated: a request with a wrong header sum gets a right one. */
		ipsum = (__u64)ip[0] + ip[1] + ip[2] + ip[3] + ip[4];
		ip[2] |= (__u32)(__u16)~csum_fold(ipsum) << 16;
		x = ip[3], ip[3] = ip[4], ip[4] = x;
	}
	sum_be = bpf_ntohs(csum_fold(le));
	c = ~csum_fold(sum_be + payload_csum) & 0xffff;
	if (!c)
		c = 0xffff;

	swap_macs(&mac0, &mac1);
	*(__u64 *)d = mac0;
	*(__u32 *)(d + 8) = mac1;
	*(__u16 *)(d + 12) = vlan_or_type;
	if (l3 == 18)
		*(__u32 *)(d + 14) = vlan_tail;
	if (l4->ipv6) {
#pragma unroll
		for (int i = 0; i < 10; i++)
			*(__u32 *)(dl3 + 4 * i) = ip[i];
	} else {
#pragma unroll
		for (int i = 0; i < 5; i++)
			*(__u32 *)(dl3 + 4 * i) = ip[i];
	}
	*(__u32 *)dl4 = (ports >> 16) | (ports << 16);
	*(__u32 *)(dl4 + 4) = bpf_htons(ulen) | ((__u32)bpf_htons(c) << 16);
	*(__u64 *)(dl4 + 8) = frame;
	return 0;
}

/* source_of reads the request's source address as two 8-byte words in memory order, IPv4 as
 * IPv4-mapped IPv6 (::ffff:a.b.c.d). The words are built in registers: four 4-byte stores read
 * back as two 8-byte loads would stall on store forwarding. */
static __always_inline int source_of(struct xdp_md *ctx, const struct l4_info *l4, __u64 *a0,
				     __u64 *a1)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

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
static __always_inline int admit_source(struct xdp_md *ctx, const struct l4_info *l4,
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

	if (source_of(ctx, l4, &a0, &a1))
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

static __always_inline int handle_request(struct xdp_md *ctx)
{
	struct l4_info l4 = {};
	struct scratch *st;
	struct counter_set *cs;
	struct mc_frame *fr;
	void *data, *data_end;
	__u32 cmd_off, cmd_len, prefix_len, orig_len, nkeys = 0, total, pos, ip_hdr;
	int ret, delta, head_grown = 0;
	__u64 hdr[HDR_MAX / 8]; /* the request's headers, to put back if a helper fails */

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
	/* memcached reads a request only from a datagram whose frame says "1 datagram" and ignores
	 * the sequence number and the reserved bytes (clients set them: libmemcached's memcaslap
	 * puts 1 in the reserved field); the reply's frame is the request id, seq 0 of 1, 0. */
	if (fr->total != bpf_htons(1))
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
			prefix_len = 4;
		} else if (c[3] == 's' && c[4] == ' ') {
			st->gets = 1;
			prefix_len = 5;
		} else {
			return pass(PASS_NOT_GET);
		}
	}
	/* One path from here on, whatever the headers and the command were. */
	l4.l3_off = launder(st, l4.l3_off);
	l4.l4_off = launder(st, l4.l4_off);
	l4.ipv6 = launder(st, l4.ipv6) & 1;
	prefix_len = launder(st, prefix_len);
	if (l4.l3_off < 14 || l4.l3_off > 18 || l4.l4_off <= l4.l3_off || l4.l4_off > 58 ||
	    !in_range(prefix_len, 4, 5))
		return pass(PASS_INTERNAL);
	cmd_off = l4.l4_off + sizeof(struct udphdr) + FRAME_LEN;
	st->pos = cmd_off + prefix_len;
	st->end = cmd_off + cmd_len;
	st->now_ns = 0;
	st->coarse_ns = 0;
	st->out_len = 0;
	st->csum = bpf_ntohs(fr->request_id) + 1; /* frame header words: id, seq 0, total 1, 0 */

	/* The first key is scanned and found inline, so a single-key get, the common case, makes
	 * no function call before the reply grows: every call and return costs ~5-10 ns on a CPU
	 * whose returns go through a speculation-safe thunk (docs/BENCHMARKS.md section 2). The
	 * keys after it go through lookup_keys, BATCH to a call. */
	ret = find_key(st, 0, scan_key_in(ctx, st));
	if (ret < 0)
		return pass(-ret);
	nkeys = 1;
	/* Calls enough for MAX_KEYS - 1 more keys; lookup_keys refuses a key past MAX_KEYS. */
	for (__u32 b = 0; ret == 0 && b < (MAX_KEYS + BATCH - 2) / BATCH; b++) {
		ret = lookup_keys(ctx, nkeys);
		if (ret < 0) {
			/* A key that misses after others were found: a partial multi-get. */
			if (ret == -PASS_MISS || ret == -PASS_EXPIRED || ret == -PASS_FLUSHED)
				return pass(PASS_PARTIAL);
			return pass(-ret);
		}
		nkeys += ret & (LOOKUP_LAST - 1);
		ret = ret & LOOKUP_LAST ? 1 : 0;
	}
	if (ret != 1)
		return pass(PASS_TOO_MANY_KEYS);
	nkeys = launder(st, nkeys); /* one count, not one constant per count */
	if (nkeys == 0 || nkeys > MAX_KEYS)
		return pass(PASS_INTERNAL);
	/* The line must end exactly where the datagram does: nothing pipelined after it. */
	if (st->pos != cmd_off + cmd_len)
		return pass(PASS_MALFORMED);

	total = FRAME_LEN + st->out_len + END_LEN;
	ip_hdr = l4.ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	if (total > MAX_PAYLOAD || ip_hdr + sizeof(struct udphdr) + total > cfg_mtu)
		return pass(PASS_TOO_BIG);
	/* Not a reflector (DESIGN.md invariant 7): bounded amplification, allowed sources only,
	 * each within its rate. */
	if ((__u64)total * 16 > (__u64)l4.payload_len * cfg_max_amp_x16)
		return pass(PASS_AMPLIFICATION);
	ret = admit_source(ctx, &l4, st);
	if (ret)
		return pass(ret);
	st->csum += csum_at(END_CSUM, FRAME_LEN + st->out_len);

	/* The program is not loaded frags-aware (xdp.frags), so the kernel hands it only linear
	 * frames: the frame's length is data_end - data, no helper call needed. */
	orig_len = (__u32)((long)ctx->data_end - (long)ctx->data);
	delta = (int)(l4.l4_off + sizeof(struct udphdr) + total) - (int)orig_len;
	/* A reply that grows does so at the head first: XDP guarantees headroom, while veth's
	 * copied skbs have only what rounding the data to 64 bytes leaves (0-63 bytes), so most
	 * replies that grow more than that failed bpf_xdp_adjust_tail and then moved the headers
	 * through bpf_xdp_load_bytes/bpf_xdp_store_bytes: ~120-150 ns more per packet with cold
	 * caches. build_headers writes the reply's headers at the new front straight from the
	 * request's, which with cold caches is also cheaper than a tail that has room (~15 ns
	 * when the headers moved through the stack). The tail is the fallback:
	 * replies that grow past the headroom (not tried at the head: a failed call costs ~8 ns),
	 * and shrinks. */
	if (delta > 0 && delta <= HEAD_GROW_MAX && cmd_off <= HDR_MAX && cmd_off >= 14 &&
	    !read_headers(ctx, hdr, cmd_off) && !bpf_xdp_adjust_head(ctx, -delta)) {
		head_grown = delta;
		/* Before the entries: they land where the request's headers still are. */
		if (build_headers(ctx, &l4, delta, total, st->csum))
			goto fail;
	} else if (bpf_xdp_adjust_tail(ctx, delta)) {
		return pass(PASS_TOO_BIG);
	}
#ifdef XDPCACHE_BENCH
	st->bench_head_grown = head_grown; /* for the benchmark wrapper's restore */
#endif

	/* A single-key reply is written inline: every call and return costs ~5-10 ns on a CPU
	 * whose returns go through a speculation-safe thunk (docs/BENCHMARKS.md section 2). */
	if (nkeys == 1) {
		if (emit_key_in(ctx, st, 0, cmd_off, 1) < 0)
			goto fail;
	} else {
		/* Several keys: BATCH to a call. */
		pos = cmd_off;
		for (__u32 b = 0; b < MAX_KEYS / BATCH; b++) {
			if (b * BATCH >= nkeys)
				break;
			ret = emit_keys(ctx, b * BATCH, pos, nkeys);
			if (ret < 0)
				goto fail;
			pos = ret;
		}
	}
	/* In place, after the entries, which do not touch the headers: a failed emit leaves them
	 * as they came. */
	if (!head_grown && build_headers(ctx, &l4, 0, total, st->csum))
		goto fail; /* unreachable: the headers were in bounds before the resize */

	cs = counter_set();
	if (cs) {
		cs->n[CNT_REQUESTS] += 1;
		cs->n[CNT_HITS] += nkeys;
		cs->n[CNT_BYTES] += total;
	}
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
			bpf_xdp_store_bytes(ctx, 0, hdr, cmd_off);
	}
	{
		int cur = bpf_xdp_get_buff_len(ctx);

		if (bpf_xdp_adjust_tail(ctx, (int)orig_len - cur))
			return pass(PASS_INTERNAL);
	}
	/* Constant lengths: the verifier needs a bounded size on the register passed. */
	if (st->gets ? bpf_xdp_store_bytes(ctx, cmd_off, "gets ", 5) :
		       bpf_xdp_store_bytes(ctx, cmd_off, "get ", 4))
		return pass(PASS_INTERNAL);
	pos = cmd_off + (st->gets ? 5 : 4);
	for (__u32 i = 0; i < MAX_KEYS; i++) {
		if (i >= nkeys)
			break;
		ret = restore_key(ctx, i, pos);
		if (ret < 0)
			break;
		pos += ret;
		bpf_xdp_store_bytes(ctx, pos, i + 1 == nkeys ? "\r\n" : " ", i + 1 == nkeys ? 2 : 1);
		pos += i + 1 == nkeys ? 2 : 1;
	}
	return pass(PASS_INTERNAL);
}

SEC("xdp")
int xdp_cache(struct xdp_md *ctx)
{
	return handle_request(ctx);
}

#ifdef XDPCACHE_BENCH
#include "bench.h"
/* bench_head_grown reports, and forgets, how far the last run grew the reply at the head, so
 * that the restore gives the headroom back. */
static __always_inline int bench_head_grown(void)
{
	struct scratch *st = get_scratch();
	int grown;

	if (!st)
		return 0;
	grown = st->bench_head_grown;
	st->bench_head_grown = 0;
	return grown;
}

BENCH_PROGRAM(xdp_cache_bench, handle_request, bench_head_grown)
#endif
