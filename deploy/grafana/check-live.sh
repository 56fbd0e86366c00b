#!/usr/bin/env bash
# check-live.sh: run every query of the Grafana dashboard against a real Prometheus that scrapes a
# live `xdpcache serve` (XDP in generic mode on a private namespace's lo) and `xdpcache bench`,
# and print how many series each returns and a sample value. The Go tests check the queries'
# metric names offline; this checks that they return what the panel promises.
#
# Needs root (XDP, a network namespace), go, python3 and prometheus (Debian: apt-get install
# prometheus). Everything runs inside a namespace it creates and deletes; nothing listens outside.
# However the script ends (success, failure, Ctrl-C, SIGTERM), every process it started is stopped
# and the namespace is gone: each runs inside the namespace, and the exit trap stops whatever is
# still in there before deleting it. XDPCACHE_BIN names a prebuilt binary to use instead of building.
# Usage (as root): deploy/grafana/check-live.sh [seconds of load, default 40]
set -euo pipefail

cd "$(dirname "$0")/../.."
LOAD_SECONDS=${1:-40}
NS=xdpcache-dash-$$
WORK=$(mktemp -d)
OLD_STATS=$(sysctl -n kernel.bpf_stats_enabled)

# ns_pids lists the processes in the namespace (none once it is deleted).
ns_pids() { ip netns pids "$NS" 2>/dev/null || true; }

cleanup() {
	local status=$?
	trap - EXIT INT TERM HUP
	# Every process started here runs in $NS, so `ip netns pids` finds each one, whatever forked it
	# (a PID recorded in the script would be the subshell's, not the server's): TERM, up to 5 s to
	# finish, then KILL.
	local pids
	pids=$(ns_pids)
	if [ -n "$pids" ]; then
		# shellcheck disable=SC2086
		kill $pids 2>/dev/null || true
		for _ in $(seq 50); do
			[ -z "$(ns_pids)" ] && break
			sleep 0.1
		done
		pids=$(ns_pids)
		# shellcheck disable=SC2086
		[ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
		for _ in $(seq 50); do
			[ -z "$(ns_pids)" ] && break
			sleep 0.1
		done
	fi
	# What runs outside it (the sleep below): the shell's own background jobs.
	jobs -p | xargs -r kill 2>/dev/null || true
	wait 2>/dev/null || true # reap the background children
	ip netns del "$NS" 2>/dev/null || true
	sysctl -q kernel.bpf_stats_enabled="$OLD_STATS"
	rm -rf "$WORK"
	exit "$status"
}
trap cleanup EXIT
# A signal ends the script through the exit trap (bash runs it only on exit, not on a signal).
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${XDPCACHE_BIN:-}" ]; then
	cp "$XDPCACHE_BIN" "$WORK/xdpcache"
else
	go build -o "$WORK/xdpcache" ./cmd/xdpcache
fi
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }
# The program-time panel needs the kernel's per-program accounting; restored on exit.
sysctl -q kernel.bpf_stats_enabled=1

# Background processes are started with `ip netns exec` directly, not through in_ns: `ip netns
# exec` execs the command, so $! is the process itself.
ip netns exec "$NS" "$WORK/xdpcache" serve -p 21911 -U 21911 --xdp-iface lo --xdp-mode generic \
	--mark-kernel-replies 10 --admission always --metrics-addr 127.0.0.1:9150 \
	--log-format json >"$WORK/serve.log" 2>&1 &

cat >"$WORK/prometheus.yml" <<'EOF'
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: xdpcache
    static_configs: [{targets: ["127.0.0.1:9150"]}]
  - job_name: xdpcache-bench
    static_configs: [{targets: ["127.0.0.1:9151"]}]
EOF
ip netns exec "$NS" prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
	--web.listen-address=127.0.0.1:9090 >"$WORK/prometheus.log" 2>&1 &

for _ in $(seq 50); do
	in_ns python3 -c 'import socket; socket.create_connection(("127.0.0.1", 21911), 1)' 2>/dev/null && break
	sleep 0.2
done

# UDP for kernel hits, and a TCP run for connections; some misses (keys beyond the loaded set
# are never set: --get-ratio < 1 sets them later) and sets.
ip netns exec "$NS" "$WORK/xdpcache" bench --server 127.0.0.1:21911 --rate 5000 --duration "${LOAD_SECONDS}s" \
	--warmup 0 --keys 2000 --kernel-dscp 10 --get-ratio 0.95 \
	--metrics-addr 127.0.0.1:9151 >"$WORK/bench.out" 2>"$WORK/bench.err" &
ip netns exec "$NS" "$WORK/xdpcache" bench --server 127.0.0.1:21911 --proto tcp --rate 500 --duration "${LOAD_SECONDS}s" \
	--warmup 0 --keys 4000 --load=false --get-ratio 0.9 >/dev/null 2>&1 &

# In the background so that a signal is handled at once, not after the sleep.
sleep $((LOAD_SECONDS * 3 / 4)) &
wait $!

status=0
# In the background too, so that a signal stops it at once.
in_ns python3 - deploy/grafana/xdpcache.json <<'EOF' &
import json, sys, urllib.parse, urllib.request

dash = json.load(open(sys.argv[1]))
def panels(ps):
    for p in ps:
        if p.get("type") == "row":
            yield from panels(p.get("panels", []))
        else:
            yield p
empty = 0
for p in panels(dash["panels"]):
    for t in p["targets"]:
        q = (t["expr"].replace("$__rate_interval", "10s")
             .replace("$instance", ".*").replace("$bench", ".*"))
        url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": q})
        res = json.load(urllib.request.urlopen(url, timeout=10))
        if res["status"] != "success":
            print(f"ERROR {p['title']} {t['refId']}: {res}")
            empty += 1
            continue
        r = res["data"]["result"]
        sample = ", ".join(f"{s['metric']}={float(s['value'][1]):.4g}" for s in r[:3])
        if not r:
            empty += 1
        print(f"{len(r):3d} series  {p['title']} [{t['refId']}]  {sample}")
print(f"{empty} queries returned nothing")
sys.exit(1 if empty else 0)
EOF
wait $! || status=$?
if [ "$status" -ne 0 ]; then
	for f in serve.log bench.err prometheus.log; do
		echo "--- $f (last lines)"
		tail -n 5 "$WORK/$f"
	done
fi
exit "$status"
