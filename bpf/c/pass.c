//go:build ignore

/* pass.c: a program that passes every packet. On a veth pair, native-mode XDP_TX from one end
 * needs an XDP program on the peer; this is that program. */

#include "common.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
