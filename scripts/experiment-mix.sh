#!/usr/bin/env bash
# Experiment 1: the userspace latency cost of the kernel path. A fixed mix of GETs the
# kernel can answer (HOT_RATE/s over HOT_KEYS keys) and GETs that must reach userspace (USER_RATE/s:
# USER_KIND=miss, keys never set; or large, values over one datagram), two benches at once, with
# serve's --xdp-iface off and on; only that differs. Prints userspace p50/p90/p99/p99.9 both ways
# and on/off. Needs root.
#
#   scripts/experiment-mix.sh
#   HOT_RATE=50000 USER_RATE=5000 ROUNDS=5 DURATION=20s scripts/experiment-mix.sh
#
# Env: HOT_RATE (20000) USER_RATE (2000) USER_KIND (miss) HOT_KEYS (1000) DURATION (10s)
# WARMUP (3s) ROUNDS (3) SERVER_CPU (0) CLIENT_CPU (1) BIN OUT (results/mix-TIME).
source "$(dirname "$0")/experiment-lib.sh"
xp mix "$@"
