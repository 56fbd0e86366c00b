#!/usr/bin/env bash
# The socket-layer reply paths side by side (bpf/skprobe_bench_test.go): one request in flight on
# one loopback TCP connection (SkLayerReply) and on 64 (SkLayerReplyConns), answered by a userspace
# reader or in the kernel. Prints the median of COUNT runs per case and its ratio to the userspace
# reader of the same kind (blocking thread, or goroutine on the netpoller) in the same benchmark and
# run. Needs root.
#   COUNT (5) runs of N (19200, a multiple of 64) requests each.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-5}
n=${N:-19200}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs" >&2
CI=true go test ./bpf -run '^$' -bench 'SkLayerReply' -benchtime "${n}x" -count "$count" |
	awk '/^BenchmarkSkLayerReply/ {
		name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
		for (i = 3; i + 1 <= NF; i += 2) print name, $(i + 1), $i
	}' |
	sort -k1,1 -k2,2 -k3,3g |
	awk '
	function flush() {
		if (cnt == 0) return
		m = (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
		med[key] = m; if (!(c in seen)) { seen[c] = 1; order[++nc] = c }
		cnt = 0
	}
	{ k = $1 SUBSEP $2; if (k != key) { flush(); key = k; split(k, p, SUBSEP); c = p[1] } v[++cnt] = $3 }
	END {
		flush()
		split("ns/op cpu-us/op process-switches/op reader-wakes/op", ms, " ")
		printf "%-48s", "case (median of runs)"
		for (j = 1; j <= 4; j++) printf " %22s", ms[j]
		printf "\n"
		for (i = 1; i <= nc; i++) {
			c = order[i]; base = c; sub(/\/.*/, "", base)
			base = base ((c ~ /netpoll$/) ? "/userspace-netpoll" : "/userspace")
			printf "%-48s", c
			for (j = 1; j <= 4; j++) {
				k = c SUBSEP ms[j]; b = base SUBSEP ms[j]
				if (!(k in med)) { printf " %22s", "-"; continue }
				r = (b in med && med[b] > 0) ? sprintf("(%.2fx)", med[k] / med[b]) : ""
				printf " %13.3f %8s", med[k], r
			}
			printf "\n"
		}
	}'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
