/* copy.h: copying bytes from map memory into the packet with inline word stores.
 *
 * A helper call costs more than the copy it makes on CPUs whose returns go through a
 * speculation-safe thunk (docs/BENCHMARKS.md measures it), and bpf_xdp_store_bytes pays two
 * returns (its own and its memcpy's). The cache programs copy every entry with these; the
 * benchmark build of echo.c copies its reply with them too, so both pay the same for the same
 * bytes.
 */
#pragma once

#include "common.h"

#define COPY_LIMIT 1392     /* largest piece: one datagram's payload less the frame header */
#define COPY_DIRECT_MAX 128 /* pieces up to this size are copied word by word */
#define COPY_BLOCK 64       /* larger pieces, in blocks of this size */

/* copy_direct copies n (8..COPY_DIRECT_MAX) bytes from src to packet offset pos in 8-byte words,
 * the last word overlapping the one before it. */
static __always_inline int copy_direct(void *data, void *data_end, __u32 pos, const __u8 *src,
				       __u64 n)
{
	__u64 off = pos, t = n - 8;
	__u8 *p, *q;

	if (!in_range(off, 0, 2048) || !in_range(t, 0, COPY_DIRECT_MAX - 8))
		return -1;
	p = data + off;
	for (__u32 w = 0; w < COPY_DIRECT_MAX / 8; w++) {
		if (w * 8 >= t)
			break;
		q = p + w * 8;
		if ((void *)(q + 8) > data_end)
			return -1;
		*(__u64 *)q = *(const __u64 *)(src + w * 8);
	}
	q = p + t;
	if ((void *)(q + 8) > data_end)
		return -1;
	*(__u64 *)q = *(const __u64 *)(src + t);
	return 0;
}

/* copy_block stores the COPY_BLOCK bytes at src at q, which the caller checked. */
static __always_inline void copy_block(__u8 *q, const __u8 *src)
{
#pragma unroll
	for (int i = 0; i < COPY_BLOCK / 8; i++)
		((__u64 *)q)[i] = ((const __u64 *)src)[i];
}

/* copy_blocks copies n (COPY_BLOCK..COPY_LIMIT) bytes from src to packet offset pos in blocks of
 * eight 8-byte words, one bounds check per block, the last block overlapping the one before it.
 * Cheaper than bpf_xdp_store_bytes at every size it takes (docs/BENCHMARKS.md). */
static __always_inline int copy_blocks(void *data, void *data_end, __u32 pos, const __u8 *src,
				       __u64 n)
{
	__u64 off = pos, t = n - COPY_BLOCK;
	__u8 *p, *q;

	if (!in_range(off, 0, 2048) || !in_range(t, 0, COPY_LIMIT - COPY_BLOCK))
		return -1;
	p = data + off;
	for (__u32 b = 0; b < COPY_LIMIT / COPY_BLOCK; b++) {
		__u32 o = b * COPY_BLOCK;

		if (o >= t)
			break;
		q = p + o;
		if ((void *)(q + COPY_BLOCK) > data_end)
			return -1;
		copy_block(q, src + o);
	}
	q = p + t;
	if ((void *)(q + COPY_BLOCK) > data_end)
		return -1;
	copy_block(q, src + t);
	return 0;
}

/* copy_bytes copies n (1..7) bytes from src to packet offset pos one at a time: cheaper than a
 * helper call for so few. */
static __always_inline int copy_bytes(void *data, void *data_end, __u32 pos, const __u8 *src,
				      __u64 n)
{
	__u64 off = pos;
	__u8 *p;

	if (!in_range(off, 0, 2048) || !in_range(n, 1, 7))
		return -1;
	p = data + off;
	for (__u32 i = 0; i < 7; i++) {
		if (i >= n)
			break;
		if ((void *)(p + i + 1) > data_end)
			return -1;
		p[i] = src[i];
	}
	return 0;
}

/* copy_piece copies n (1..COPY_LIMIT) bytes from src to packet offset pos with inline stores.
 * Returns 0 or -1. It works on any packet the program may write directly: an XDP frame, or a
 * linear skb at TC. */
static __always_inline int copy_piece(void *data, void *data_end, __u32 pos, const __u8 *src,
				      __u64 n)
{
	if (!in_range(n, 1, COPY_LIMIT))
		return -1;
	/* Small pieces first in the code's layout: they are the common case, and a packet that
	 * arrives alone pays for every cache line of code its path touches. */
	if (likely(n >= 8 && n <= COPY_DIRECT_MAX))
		return copy_direct(data, data_end, pos, src, n);
	if (n > COPY_DIRECT_MAX)
		return copy_blocks(data, data_end, pos, src, n);
	return copy_bytes(data, data_end, pos, src, n);
}
