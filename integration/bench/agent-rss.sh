#!/usr/bin/env bash
# `ferry run` against a TUF repository on loopback (20 file targets), polling
# as fast as it can: resident memory after 100 no-change polls and after
# POLLS, and CPU per no-change poll (from /proc, between the two).
#
#   integration/bench/agent-rss.sh [POLLS]        (default 10000)
#
# Goals: idle RSS <= 10 MiB; no growth over 10,000 polls.
set -euo pipefail
cd "$(dirname "$0")/../.."
polls=${1:-10000}
cargo build --release -q -p ferry
ferry=$PWD/target/release/ferry
source integration/bench/lib.sh
bench_venv
work=$(mktemp -d)
trap 'kill $agent $server 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/root"
bench_repo20 "$work"

port=$(free_port)
mport=$(free_port)
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/tuf" >/dev/null 2>&1 &
server=$!
wait_http "http://127.0.0.1:$port/metadata/timestamp.json"

cat > "$work/ferry.toml" <<TOML
state_dir = "$work/state"
[source]
kind = "tuf"
[source.tuf]
metadata_url = "http://127.0.0.1:$port/metadata"
targets_url = "http://127.0.0.1:$port/targets"
root = "$work/tuf/metadata/1.root.json"
[files]
root = "$work/root"
[agent]
poll_interval = "1ms"
jitter = "0s"
control_socket = "$work/ferry.sock"
[metrics]
listen = "127.0.0.1:$mport"
TOML
"$ferry" --config "$work/ferry.toml" run 2>"$work/agent.log" &
agent=$!

polls_done() {
    curl -sf "http://127.0.0.1:$mport/metrics" | awk '/^ferry_reconciles_total/ {n += $2} END {print n + 0}'
}
wait_polls() {
    until [ "$(polls_done)" -ge "$1" ]; do
        kill -0 "$agent" || { cat "$work/agent.log"; exit 1; }
        sleep 0.2
    done
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$agent/status"; }
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$agent/stat"; }

wait_polls 100
rss100=$(rss_kib); cpu100=$(cpu_ticks); n100=$(polls_done)
wait_polls "$polls"
rssN=$(rss_kib); cpuN=$(cpu_ticks); nN=$(polls_done)
hz=$(getconf CLK_TCK)
failed=$(curl -sf "http://127.0.0.1:$mport/metrics" | awk -F' ' '/result="failed"/ {print $2}')
python3 - "$rss100" "$rssN" "$cpu100" "$cpuN" "$n100" "$nN" "$hz" "$failed" <<'PY'
import sys
r100, rN, c100, cN, n100, nN, hz, failed = map(float, sys.argv[1:])
print(f"ferry run, TUF repository on loopback, 20 resources, polls back to back")
print(f"RSS after {n100:.0f} polls     : {r100 / 1024:6.1f} MiB   (goal <= 10 MiB)")
print(f"RSS after {nN:.0f} polls   : {rN / 1024:6.1f} MiB   (growth {(rN - r100) / 1024:+.1f} MiB; goal: none)")
print(f"CPU per no-change poll : {(cN - c100) / hz / (nN - n100) * 1000:6.2f} ms")
print(f"failed polls           : {failed:.0f}")
PY
