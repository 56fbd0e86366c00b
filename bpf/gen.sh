#!/bin/sh
# Compiles each XDP object with bpf2go (pinned by go.mod's tool directive). CLANG picks the
# compiler; -idirafter finds Debian's asm/types.h, which -target bpf does not search.
set -eu
cd "$(dirname "$0")"
cc=${CLANG:-clang-19}
cflags="-O2 -g -Wall -Werror -idirafter /usr/include/x86_64-linux-gnu"
export GOPACKAGE=bpf
go tool bpf2go -cc "$cc" -target bpfel -type entry_hdr -type index_slot -type counter -type counter_set -type allow_key -type hit_time_hist -type hit_time_prog xdpcache c/cache.c -- $cflags
go tool bpf2go -cc "$cc" -target bpfel echo c/echo.c -- $cflags
go tool bpf2go -cc "$cc" -target bpfel pass c/pass.c -- $cflags
# Objects only tests load, generated into _test.go files so the package itself holds none of them:
# the programs wrapped for BPF_PROG_RUN benchmarks (c/bench.h), and the probes of the socket-layer
# hooks (SK_SKB, SK_MSG; skprobe_test.go).
go tool bpf2go -cc "$cc" -target bpfel -output-suffix _test xdpcacheBench c/cache_bench.c -- $cflags
go tool bpf2go -cc "$cc" -target bpfel -output-suffix _test echoBench c/echo_bench.c -- $cflags
go tool bpf2go -cc "$cc" -target bpfel -output-suffix _test skProbe c/sk_probe.c -- $cflags
