#!/usr/bin/env bash
# `ferry run` against a TUF repository on loopback (20 file targets), polling
# as fast as it can: resident memory after 100 no-change polls and after
# POLLS, and CPU per no-change poll (from /proc, between the two; the agent
# and its reconcile processes). Twice: with the conditional poll (the
# default: one If-Modified-Since request for timestamp.json, 304, no
# process) and with `agent.conditional_poll = false` (a reconcile process
# per poll). Then a git device (the same 20 files in SSH-signed commits
# over file://, a reconcile process per poll: fetch, verify, render; the
# files' content addresses come from the blob map, so no file is read).
#
#   integration/bench/agent-rss.sh [POLLS]        (default 10000)
#
# Drift detection is on (the default) in both; after the second run, the
# latency from a hand edit of a managed file to its `drift-detected` entry
# (and its restore): with the agent's inotify watch and polls an hour apart
# (the watch starts the reconcile), and without it (`agent.drift_watch =
# false`) with polls back to back and `poll_interval = "1s"`.
#
# Goals: idle RSS <= 6 MiB and <= 2 ms CPU per no-change poll; no growth.
set -euo pipefail
cd "$(dirname "$0")/../.."
polls=${1:-10000}
cargo build --release -q -p ferry
ferry=$PWD/target/release/ferry
source integration/bench/lib.sh
bench_venv
work=$(mktemp -d)
agent=
trap 'kill $agent $server 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/root"
bench_repo20 "$work"

port=$(free_port)
mport=$(free_port)
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/tuf" >/dev/null 2>&1 &
server=$!
wait_http "http://127.0.0.1:$port/metadata/timestamp.json"

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

# The same 20 files as SSH-signed commits in a bare repository.
git_repo() {
    ssh-keygen -q -t ed25519 -N '' -C admin@example -f "$work/admin"
    mkdir -p "$work/trust"
    echo "admin@example $(cat "$work/admin.pub")" > "$work/trust/allowed_signers"
    git init -q -b main "$work/gitwork"
    git init -q --bare -b main "$work/fleet.git"
    mkdir -p "$work/gitwork/files"
    cp "$work/files/"* "$work/gitwork/files/"
    cp "$work/manifest.yaml" "$work/gitwork/ferry.yaml"
    (
        cd "$work/gitwork"
        export HOME=$work GIT_CONFIG_NOSYSTEM=1
        git config user.name admin; git config user.email admin@example
        git config gpg.format ssh; git config user.signingkey "$work/admin"
        git add -A; git commit -q -S -m "20 files"
        git push -q "$work/fleet.git" main
    )
}

# measure CONDITIONAL|git: one agent run of $polls polls.
measure() {
    rm -rf "$work/state" "$work/root" && mkdir -p "$work/root"
    local source conditional=$1
    if [ "$1" = git ]; then
        conditional=false
        source="kind = \"git\"
[source.git]
url = \"file://$work/fleet.git\"
trust_dir = \"$work/trust\""
    else
        source="kind = \"tuf\"
[source.tuf]
metadata_url = \"http://127.0.0.1:$port/metadata\"
targets_url = \"http://127.0.0.1:$port/targets\"
root = \"$work/tuf/metadata/1.root.json\""
    fi
    cat > "$work/ferry.toml" <<TOML
state_dir = "$work/state"
[source]
$source
[files]
root = "$work/root"
[agent]
poll_interval = "1ms"
jitter = "0s"
control_socket = "$work/ferry.sock"
conditional_poll = $conditional
drift_watch = true
[metrics]
listen = "127.0.0.1:$mport"
TOML
    "$ferry" --config "$work/ferry.toml" run 2>"$work/agent.log" &
    agent=$!
    wait_polls 100
    rss100=$(rss_kib); cpu100=$(cpu_ticks); n100=$(polls_done)
    wait_polls "$polls"
    rssN=$(rss_kib); cpuN=$(cpu_ticks); nN=$(polls_done)
    local metrics
    metrics=$(curl -sf "http://127.0.0.1:$mport/metrics")
    failed=$(echo "$metrics" | awk -F' ' '/result="failed"/ {print $2}')
    unchanged=$(echo "$metrics" | awk '/^ferry_unchanged_polls_total/ {print $2}')
    kill "$agent"; wait "$agent" 2>/dev/null || true
    python3 - "$1" "$rss100" "$rssN" "$cpu100" "$cpuN" "$n100" "$nN" "$(getconf CLK_TCK)" "$failed" "$unchanged" <<'PY'
import sys
mode = sys.argv[1]
r100, rN, c100, cN, n100, nN, hz, failed, unchanged = map(float, sys.argv[2:])
what = {"true": "TUF over HTTP, conditional poll (304, no process)",
        "false": "TUF over HTTP, a reconcile process per poll",
        "git": "signed git over file://, a reconcile process per poll"}[mode]
print(f"ferry run, 20 resources, polls back to back: {what}")
print(f"  RSS after {n100:.0f} polls     : {r100 / 1024:6.1f} MiB   (goal <= 6 MiB)")
print(f"  RSS after {nN:.0f} polls   : {rN / 1024:6.1f} MiB   (growth {(rN - r100) / 1024:+.1f} MiB; goal: none)")
print(f"  CPU per no-change poll : {(cN - c100) / hz / (nN - n100) * 1000:6.2f} ms   (goal <= 2 ms)")
print(f"  polls ended by a 304   : {unchanged:.0f}; failed polls: {failed:.0f}")
PY
}

measure true
measure false

# The drift-detected entries so far.
detected() {
    "$ferry" --config "$work/ferry.toml" audit list --json --event drift-detected 2>/dev/null |
        { grep -o '"event": *"drift-detected"' || true; } | wc -l
}

# latency INTERVAL WATCH: a managed file edited by hand while the agent
# polls every INTERVAL (a reconcile process per poll), with the drift watch
# on or off: until drift-detected, and until the file is restored.
latency() {
    sed -i "s/^poll_interval = .*/poll_interval = \"$1\"/; s/^drift_watch = .*/drift_watch = $2/" "$work/ferry.toml"
    "$ferry" --config "$work/ferry.toml" run 2>"$work/agent.log" &
    agent=$!
    # A new agent's metrics count from 0; its watch is armed by its first
    # reconcile.
    wait_polls 1
    local t0 t1 t2 seen
    seen=$(detected)
    t0=$(date +%s%N)
    # Atomically, so that no poll sees it half written.
    echo "edited by hand" > "$work/edit.tmp"
    mv "$work/edit.tmp" "$work/root/etc/app/1.conf"
    until [ "$(detected)" -gt "$seen" ]; do sleep 0.005; done
    t1=$(date +%s%N)
    until [ "$(cat "$work/root/etc/app/1.conf")" = "value = 1" ]; do sleep 0.005; done
    t2=$(date +%s%N)
    kill "$agent"; wait "$agent" 2>/dev/null || true
    echo "drift with poll_interval = $1, drift_watch = $2: detected after $(( (t1 - t0) / 1000000 )) ms, restored after $(( (t2 - t0) / 1000000 )) ms"
}
latency 1h true
latency 1ms false
latency 1s false

# A git device: a reconcile process per poll (no conditional request).
git_repo
measure git
