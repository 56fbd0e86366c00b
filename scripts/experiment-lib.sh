# Sourced by scripts/experiment-{mix,throughput,cpu,sweep,all}.sh: builds the xdpcache binary
# (unless BIN names one, e.g. built from a clean worktree of HEAD while bpf/ is in flux) and the
# experiment runner, then runs `xp NAME`. Parameters are environment variables (see each script).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
[ "$(id -u)" = 0 ] || { echo "$(basename "$0"): needs root (namespaces, XDP, BPF stats)" >&2; exit 1; }
systemctl stop memcached >/dev/null 2>&1 || true
if [ -z "${BIN:-}" ]; then
	go build -o bin/xdpcache ./cmd/xdpcache
	export BIN=bin/xdpcache
fi
go build -o bin/xp ./internal/lab/experiment/cmd/xp
xp() { bin/xp "$@"; }
