#!/usr/bin/env bash
# Who answers, and how fast, as key skew and value size change: runs `xdpcache demo` (server and
# client namespaces over a veth pair, kernel path on, replies marked) once per point of the sweep
# and prints one line per run from each bench JSON. Needs root.
#
#   scripts/experiment-skew.sh
#   THETAS="0.6 0.99 1.2" VALUES="32 512" RATE=50000 DURATION=20s scripts/experiment-skew.sh
#
# BIN=path uses an existing binary instead of building one.
# Results (bench.json, bench.png, serve.log per run) go under $OUT (default results/skew-TIME).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
THETAS=${THETAS:-"0.6 0.8 0.99 1.2"}
VALUES=${VALUES:-"32 256 1000"}
RATE=${RATE:-20000}
KEYS=${KEYS:-100000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-5s}
OUT=${OUT:-results/skew-$(date +%Y%m%d-%H%M%S)}
command -v jq >/dev/null || { echo "experiment-skew: needs jq (apt-get install jq)" >&2; exit 1; }

BIN=${BIN:-}
if [ -z "$BIN" ]; then
	go build -o bin/xdpcache ./cmd/xdpcache
	BIN=./bin/xdpcache
fi
mkdir -p "$OUT"
for v in $VALUES; do
	for th in $THETAS; do
		dir=$OUT/theta-$th-value-$v
		echo "theta $th, value $v bytes -> $dir" >&2
		"$BIN" demo --zipf-theta "$th" --value-size "$v" --rate "$RATE" --keys "$KEYS" \
			--duration "$DURATION" --warmup "$WARMUP" --results "$dir" >"$dir.table" 2>"$dir.log" ||
			{ echo "demo failed, see $dir.log" >&2; continue; }
	done
done

printf '%-6s %6s %9s %7s %7s %9s %9s %9s %9s %8s %s\n' theta value achieved hit% kernel% \
	k_p50us k_p99us u_p50us u_p99us timeouts warnings
for v in $VALUES; do
	for th in $THETAS; do
		j=$OUT/theta-$th-value-$v/bench.json
		[ -f "$j" ] || continue
		jq -r --arg th "$th" --arg v "$v" '[ $th, $v, (.achieved_rate|floor), (.hit_ratio*100|.*10|floor/10),
			(.kernel_share*100|.*10|floor/10), .classes.kernel_hit.p50_us, .classes.kernel_hit.p99_us,
			.classes.user_hit.p50_us, .classes.user_hit.p99_us, .timeouts, (.warnings|length) ] | @tsv' "$j" |
			awk -F'\t' '{ printf "%-6s %6s %9s %7s %7s %9.1f %9.1f %9.1f %9.1f %8s %s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11 }'
	done
done
