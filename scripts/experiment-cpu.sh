#!/usr/bin/env bash
# Experiment 3: server CPU per GET hit at one open-loop rate: the XDP program's run
# time per kernel hit (kernel BPF stats) against the server process's CPU per GET (/proc) for
# memcached and serve alone; also the server veth's NAPI thread and the whole server core per GET.
# Needs root.
#
#   scripts/experiment-cpu.sh
#   RATE=50000 DURATION=15s scripts/experiment-cpu.sh
#
# Env: RATE (30000) DURATION (8s) KEYS (1000) CASES ("kernel go memcached") ROUNDS (3) SERVER_CPU CLIENT_CPU
# BIN OUT (results/cpu-TIME).
source "$(dirname "$0")/experiment-lib.sh"
xp cpu "$@"
