/* keys.h: scanning and hashing request keys, 8 bytes at a time (SWAR).
 *
 * A key is every byte up to a space or the line's "\r\n", as memcached splits a line; it is
 * validated, copied into the per-CPU scratch and hashed in one pass over whole words. The hash is
 * mirrored by keyHash in entry.go: userspace files entries under the same value.
 */
#pragma once

#include "common.h"
#include "counters.h"
#include "cache_maps.h"

/* The key hash, mirrored by keyHash in entry.go: per 8-byte little-endian word (the last one
 * zero-padded) h = (h ^ w) * P1, h ^= h >> 29; then the length and a final mix. */
#define HASH_SEED 0x243F6A8885A308D3ULL
#define HASH_P1 0x9E3779B97F4A7C15ULL
#define HASH_P2 0xFF51AFD7ED558CCDULL
#define HASH_P3 0xC4CEB9FE1A85EC53ULL

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

#define SCAN_CRLF 0x10000 /* scan_key_in: the key ended the line */

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
	__u64 start = end, have;
	__u8 *p;

	if (off >= end || end - off >= 8 || end < 8 + FRAME_LEN)
		return -1;
	start -= 8;
	/* Bounded on the 64-bit register that moves the pointer: clang would otherwise bound a
	 * 32-bit copy, or add -8 to the packet pointer, and the verifier refuses both. */
	if (!in_range(start, FRAME_LEN, 2048))
		return -1;
	p = data + start;
	if ((void *)(p + 8) > data_end)
		return -1;
	have = (end - off) * 8;
	*w = (*(__u64 *)p >> (64 - have)) | ((' ' * ONES) << have);
	return 0;
}


/* scan_key_in scans the key at st->pos 8 bytes at a time: it validates, copies (st->key) and
 * hashes it (st->hash), and moves st->pos past its delimiter. It returns the key length, ORed with
 * SCAN_CRLF when "\r\n" ended the line, or a negative pass reason. */
static __always_inline int scan_key_in(void *data, void *data_end, struct scratch *st)
{
	__u64 h = HASH_SEED;
	__u32 pos, end, n = 0, d;
	int found = 0;
	__u8 *c;

	/* Loaded through volatile: clang must not carry the values over from the caller's stores
	 * and drop the bound checks below, which the verifier needs on these registers. */
	pos = *(volatile __u32 *)&st->pos;
	end = *(volatile __u32 *)&st->end;
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

