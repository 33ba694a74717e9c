#!/usr/bin/env bash
# The rule engine against LuaJIT, side by side in one run, printed as ratios.
#
#   integration/bench/rules.sh [EVENTS]        (default 1000000)
#
# 1. Pre-decoded events: the same 50 threshold/equality rules evaluated over
#    the same events, ferry (fields resolved to slots at compile time) vs
#    LuaJIT (rules compiled once to Lua functions, events pre-built tables).
#    Goal: ferry >= 1x LuaJIT.
# 2. Full pipeline, JSON line in -> actions out: ferry's decoder vs LuaJIT +
#    lua-cjson. Goal: ferry >= 2x.
# 3. Compile, swap and state hand-over cost of a 50-rule set (goal: swap < 1 ms).
# 4. MQTT round trip through mosquitto on loopback and `ferry rules run`:
#    P50/P99 (seed: 12.3 ms avg, 41.6 ms P99).
# 5. RSS of `ferry rules run` with 1,000 rules loaded (seed: 19 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
events=${1:-1000000}
cargo build --release -q -p ferry
cargo build --release -q -p ferry-rules --example rules_bench
ferry=$PWD/target/release/ferry
bench=$PWD/target/release/examples/rules_bench
source integration/bench/lib.sh
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
python3 integration/bench/rules/gen.py "$work" 50 "$events"
cp integration/bench/rules/bench.lua "$work/"

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
rate() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['events']*d['rules']/d['seconds'])" "$1"; }
eps() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['events']/d['seconds'])" "$1"; }

for mode in predecoded pipeline; do
    f=$("$bench" throughput "$work" "$mode")
    l=$(luajit "$work/bench.lua" "$work" "$mode")
    if [ "$(field "$f" fired)" != "$(field "$l" fired)" ]; then
        echo "MISMATCH: ferry fired $(field "$f" fired), luajit $(field "$l" fired)" >&2
        exit 1
    fi
    python3 - "$mode" "$f" "$l" <<'PY'
import json, sys
mode, f, l = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
fe = f["events"] * f["rules"] / f["seconds"]; le = l["events"] * l["rules"] / l["seconds"]
peer = "LuaJIT" if mode == "predecoded" else "LuaJIT+cjson"
print(f"{mode:10}  ferry {fe/1e6:8.1f} M rule-evals/s ({f['events']/f['seconds']/1e6:5.2f} M events/s)   "
      f"{peer} {le/1e6:8.1f} M rule-evals/s ({l['events']/l['seconds']/1e6:5.2f} M events/s)   "
      f"ratio {fe/le:4.2f}x   (both fired {f['fired']})")
PY
done

echo "swap        $("$bench" swap "$work")"

# MQTT round trip.
port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)
printf 'SUBSCRIBE "bench/in"\nON exists(seq) THEN publish("bench/out", "{seq}")\n' > "$work/latency.rules"
sleep 0.3
"$ferry" rules run "$work/latency.rules" --mqtt "mqtt://127.0.0.1:$port" --client-id bench-ferry & pids+=($!)
echo "mqtt        $("$bench" latency "$port" 2000)   (seed: avg 12.3 ms, P99 41.6 ms)"

# RSS with 1,000 rules loaded.
mkdir -p "$work/big"
python3 integration/bench/rules/gen.py "$work/big" 1000 1
"$ferry" rules run "$work/big/bench.rules" --socket "$work/big.sock" 2>/dev/null & big=$!; pids+=($big)
for _ in $(seq 100); do [ -S "$work/big.sock" ] && break; sleep 0.05; done
echo '{"payload": {"v0": 99, "kind": "k1"}}' | python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())" "$work/big.sock"
sleep 0.2
echo "memory      $(grep VmRSS /proc/$big/status | awk '{printf "%.1f MiB", $2/1024}') RSS with 1000 rules loaded (seed: 19 MB)"
