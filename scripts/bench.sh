#!/usr/bin/env bash
# make bench: every benchmark that has a baseline measured in the same run, with its ratio.
#   1. the Go server against Debian's memcached (TCP GET/SET, UDP GET) on loopback
#   2. the XDP program against a minimal swap-and-XDP_TX program (Program.Benchmark, in the kernel)
#   3. the item store (single shard vs sharded)
#   7. the Go client over UDP against gomemcache over TCP, both against serve with the kernel path
#   9. the socket-layer (SK_SKB/SK_MSG) reply paths against a userspace reply (scripts/sk-bench.sh)
# Figures we quote live in docs/BENCHMARKS.md with these exact commands.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-results/bench-$(date +%Y%m%d-%H%M%S).txt}
mkdir -p "$(dirname "$out")"
run() {
	echo "== $*" | tee -a "$out" >&2
	"$@" 2>&1 | tee -a "$out"
}
systemctl stop memcached >/dev/null 2>&1 || true
run go test ./server -run '^$' -bench 'VsMemcached' -benchtime 200000x -count 3
if [ "$(id -u)" = 0 ]; then
	run go test ./bpf -run '^$' -bench 'CacheVsEcho' -count 3
	run go test ./client -run '^$' -bench 'VersusGomemcache' -benchtime 1x
else
	echo "bench: skipping the XDP program and client benchmarks (needs root: run make bench as root)" >&2
fi
run go test ./cache -run '^$' -bench . -benchtime 1s -count 3
if [ "$(id -u)" = 0 ]; then
	run ./scripts/sk-bench.sh
else
	echo "bench: skipping the socket-layer reply benchmark (needs root: run make bench as root)" >&2
fi
echo "bench: all output in $out" >&2
