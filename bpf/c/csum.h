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
