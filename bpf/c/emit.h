/* emit.h: writing a found entry into the reply.
 *
 * Entries are immutable and their chunks reused only long after they leave the index (cache.go),
 * so what is copied is exactly the entry the first pass checked. A get's entry is the server's
 * reply bytes for the item, copied whole; a gets entry is two pieces around its CAS unique.
 */
#pragma once

#include "common.h"
#include "cache_maps.h"
#include "copy.h"
#include "lookup.h"

_Static_assert(DATA_MAX + END_LEN <= COPY_LIMIT, "an entry's piece must fit copy_piece");

/* emit_key_in writes the entry found for key i at packet offset pos, with "END\r\n" after it when
 * last. Returns the bytes written, END aside, or -1. Entries are immutable and their chunks reused
 * only long after they leave the index, so this is the entry the first pass checked. */
static __always_inline int emit_key_in(void *data, void *data_end, struct scratch *st, __u32 i,
				       __u32 pos, __u32 last)
{
	struct entry_hdr *e;
	__u8 *ed;
	__u64 len, hl, cl, n, tail, head = 0, dst, from, cnt;

	e = entry_at(st->locs[i & (MAX_KEYS - 1)]);
	if (!e)
		return -1;
	ed = (__u8 *)(e + 1);
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
		if (copy_piece(data, data_end, dst, ed + from, cnt))
			return -1;
		if (!st->gets || piece)
			break;
		dst = pos;
		from = len + END_LEN;
		cnt = head;
	}
	return (int)(st->gets ? len + cl : len);
}
