#!/usr/bin/env bash
# Experiment 2: GET-hit throughput in one run on a veth pair between namespaces,
# closed loop at saturation: the kernel path (all keys in the kernel cache), serve alone, Debian's
# memcached -U (one worker thread) and the bare XDP echo program (the ceiling of this client and
# machine). Server side pinned to SERVER_CPU, bench to CLIENT_CPU. Prints req/s and the ratios.
# Needs root.
#
#   scripts/experiment-throughput.sh
#   ROUNDS=5 DURATION=10s CONCURRENCY=256 scripts/experiment-throughput.sh
#
# Env: DURATION (5s) WARMUP (2s) ROUNDS (3) KEYS (1000) CONCURRENCY (128)
# CASES ("kernel go memcached echo") SERVER_CPU CLIENT_CPU BIN OUT (results/throughput-TIME).
source "$(dirname "$0")/experiment-lib.sh"
xp throughput "$@"
