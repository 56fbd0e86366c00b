#!/usr/bin/env bash
# The socket-layer reply paths side by side (bpf/skprobe_bench_test.go): one request in flight on
# one loopback TCP connection (SkLayerReply) and on 64 (SkLayerReplyConns), answered by a userspace
# reader or in the kernel. The benchmarks interleave the cases (ABBA) on the same machine state and
# compute each case's ratio to its userspace baseline; this prints the median of COUNT runs per
# figure. Needs root.   COUNT (3) runs of N (19200, a multiple of 64) requests per case.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-3}
n=${N:-19200}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs" >&2
CI=true go test ./bpf -run '^$' -bench 'SkLayerReply' -benchtime "${n}x" -count "$count" |
	awk '/^BenchmarkSkLayerReply/ {
		bench = $1; sub(/^Benchmark/, "", bench); sub(/-[0-9]+$/, "", bench)
		for (i = 5; i + 1 <= NF; i += 2) {
			m = $(i + 1); c = m
			if (sub(/-cpu-us\/req$/, "", c)) k = "cpu-us/req"
			else if (sub(/-reader-wakes\/req$/, "", c)) k = "reader-wakes/req"
			else if (sub(/-switches\/req$/, "", c)) k = "switches/req"
			else if (sub(/-time-ratio$/, "", c)) k = "time-ratio"
			else if (sub(/-cpu-ratio$/, "", c)) k = "cpu-ratio"
			else if (sub(/-us\/req$/, "", c)) k = "us/req"
			else continue
			print bench "/" c, k, $i
		}
	}' |
	sort -k1,1 -k2,2 -k3,3g |
	awk '
	function flush() {
		if (cnt == 0) return
		med[key] = (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
		if (!(c in seen)) { seen[c] = 1; order[++nc] = c }
		cnt = 0
	}
	{ k = $1 SUBSEP $2; if (k != key) { flush(); key = k; c = $1 } v[++cnt] = $3 }
	END {
		flush()
		nm = split("us/req time-ratio cpu-us/req cpu-ratio switches/req reader-wakes/req", ms, " ")
		printf "%-44s", "case (median of runs)"
		for (j = 1; j <= nm; j++) printf " %16s", ms[j]
		printf "\n"
		for (i = 1; i <= nc; i++) {
			printf "%-44s", order[i]
			for (j = 1; j <= nm; j++) {
				k = order[i] SUBSEP ms[j]
				if (k in med) printf " %16.3f", med[k]; else printf " %16s", "-"
			}
			printf "\n"
		}
	}'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
