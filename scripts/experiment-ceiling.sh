#!/usr/bin/env bash
# The load generator's own ceiling: open loop on one core against the bare XDP echo
# program on lo (generic mode), against a bare batched closed-loop UDP client in the same run.
# Needs root (XDP attach). Pins the whole test process to one CPU so both clients get one core.
#
#   scripts/experiment-ceiling.sh [CPU] [RUNS]
#
# Prints each run's figures and the ratio open-loop/bare (the target is at least 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=${1:-1}
runs=${2:-3}
export PATH=$PATH:/usr/local/go/bin
bin=$(mktemp -d)/loadgen.test
trap 'rm -rf "$(dirname "$bin")"' EXIT
go test -c -o "$bin" ./loadgen/
for i in $(seq "$runs"); do
	echo "run $i (taskset -c $cpu):"
	taskset -c "$cpu" "$bin" -test.run '^$' -test.bench '^BenchmarkCeiling$' -test.benchtime 1x -test.v |
		grep -E 'ceiling_test|Benchmark' | sed 's/^ *//'
done
