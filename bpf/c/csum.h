/* csum.h: Internet checksum arithmetic (RFC 1071) for replies built in place.
 *
 * Sums are kept unfolded in 32 or 64 bits as big-endian 16-bit words. A block of bytes whose sum
 * was computed from an even offset contributes its byte-swapped sum when it lands at an odd
 * offset: that is what lets userspace precompute each cache entry's sum once at fill time.
 */
#pragma once

#include "common.h"

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* csum_at is the contribution of a block with folded sum s placed at payload offset off. s is
 * already folded (entries carry sums userspace folded at fill time), so it is not folded again. */
static __always_inline __u64 csum_at(__u32 s, __u32 off)
{
	__u16 f = (__u16)s;

	if (off & 1)
		f = (__u16)((f >> 8) | (f << 8));
	return f;
}

/* csum_words sums n 32-bit words at p (n constant, p within bounds) and returns the folded sum
 * as a big-endian 16-bit value. The one's complement sum does not depend on byte order (RFC 1071
 * 2(B)), so it adds native little-endian words, four bytes per add, and swaps once at the end
 * rather than once per 16-bit word. */
static __always_inline __u64 csum_words(const void *p, int n)
{
	const __u32 *w = p;
	__u64 s = 0;

#pragma unroll
	for (int i = 0; i < n; i++)
		s += w[i];
	return bpf_ntohs(csum_fold(s));
}
