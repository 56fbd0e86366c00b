#!/usr/bin/env bash
# `make experiment`: the four experiments in order (mix, throughput, cpu, sweep), about
# seven minutes with the defaults; each prints its figures and writes results/<name>-TIME (or
# OUT/<name>). Every parameter of the single scripts applies. Needs root.
#
#   scripts/experiment-all.sh
source "$(dirname "$0")/experiment-lib.sh"
xp all "$@"
