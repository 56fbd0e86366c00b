//go:build ignore

/* cache_bench.c: cache.c wrapped for BPF_PROG_RUN benchmarks (bench.h). Only tests load this
 * object. */

#define XDPCACHE_BENCH
#include "cache.c"
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

BENCH_PROGRAM(xdp_cache_bench, handle_xdp, bench_head_grown)
