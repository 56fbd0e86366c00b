#!/usr/bin/env bash
# Experiment 4: kernel share against kernel cache size and Zipf skew. One serve run per
# point with --kernel-cache-entries = CACHE_PERCENTS of KEYS; writes sweep.png (a line per theta),
# points.csv and points.json, and prints the grid. Needs root.
#
#   scripts/experiment-sweep.sh
#   THETAS="0.99 1.2" CACHE_PERCENTS="1 10 100" ADMISSION=always scripts/experiment-sweep.sh
#
# Env: THETAS ("0.6 0.8 0.99 1.2") CACHE_PERCENTS ("1 5 10 25 100") KEYS (10000) RATE (20000)
# DURATION (4s) WARMUP (3s) SETTLE (0.01) WARMUP_MAX (15s) ADMISSION (frequency) SERVER_CPU
# CLIENT_CPU BIN OUT (results/sweep-TIME).
source "$(dirname "$0")/experiment-lib.sh"
xp sweep "$@"
