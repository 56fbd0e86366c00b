/* lookup.h: finding a key's entry in the kernel cache and checking that it may be served.
 *
 * Every lookup is an ARRAY lookup (cache_maps.h). An entry is served only if it holds exactly the
 * scanned key, outlived no flush and no expiry, and its lengths are sane; each check that fails
 * is a pass reason, never a wrong answer.
 */
#pragma once

#include "common.h"
#include "counters.h"
#include "csum.h"
#include "cache_maps.h"
#include "keys.h"

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
		 * one (the last tick's time, cheaper to read): it lags by at most a tick, which
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

