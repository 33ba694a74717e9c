#!/usr/bin/env bash
# The WASM module host, printed next to the seed's WASI engine figures
# (start P95 9.2 ms, idle 1.8 MB, args_get 0.3 us, instance reuse 91%).
#
#   integration/bench/wasm.sh
#
# 1. Instantiation from a cached, pre-linked module: P50/P95/P99 over
#    10,000 (goal P95 < 50 us), with compile-from-scratch and load-from-the-
#    sealed-cache for contrast.
# 2. Per-call overhead on a live instance (trivial handler; Modbus decode).
# 3. Resident memory per idle instance (500 live instances).
# 4. RSS of `ferry run` with 10 modules loaded, against the same agent with
#    none.
# Means with confidence intervals: cargo bench -p ferry-wasm --bench host.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p ferry
cargo build --release -q -p ferry-wasm --example wasm_bench
ferry=$PWD/target/release/ferry
bench=$PWD/target/release/examples/wasm_bench
source integration/bench/lib.sh
work=$(mktemp -d)
agent=
trap '[ -n "$agent" ] && kill "$agent" 2>/dev/null; rm -rf "$work"' EXIT

inst=$("$bench" instantiate 10000)
call=$("$bench" call 1000000)
idle=$("$bench" idle 500)

# An agent with N modules (and a rule set calling them), idle.
agent_rss() {
    local n=$1 dir=$work/agent-$1 i
    mkdir -p "$dir/repo/modules" "$dir/repo/rules" "$dir/root"
    "$bench" fixtures "$dir/repo/modules" "$n"
    {
        echo "apiVersion: ferry.dev/v1"
        echo "resources:"
        echo "  - {kind: ruleset, name: site, source: rules/site.rules}"
        for i in $(seq "$n"); do
            echo "  - {kind: wasm, name: decoder-$i, source: modules/decoder-$i.wasm}"
        done
    } > "$dir/repo/ferry.yaml"
    : > "$dir/repo/rules/site.rules"
    for i in $(seq "$n"); do
        echo "RULE d$i ON topic ~ \"modbus/$i/raw\" THEN call(\"decoder-$i\", \"decode\")" >> "$dir/repo/rules/site.rules"
    done
    cat > "$dir/ferry.toml" <<TOML
state_dir = "$dir/state"
[source]
kind = "dir"
[source.dir]
path = "$dir/repo"
insecure = true
[files]
root = "$dir/root"
[agent]
poll_interval = "1h"
jitter = "0s"
control_socket = "$dir/ferry.sock"
[rules]
socket = "$dir/events.sock"
TOML
    "$ferry" --config "$dir/ferry.toml" apply >/dev/null
    "$ferry" --config "$dir/ferry.toml" run 2>"$dir/agent.log" &
    agent=$!
    for _ in $(seq 100); do [ -S "$dir/events.sock" ] && break; sleep 0.1; done
    [ -S "$dir/events.sock" ] || { cat "$dir/agent.log"; exit 1; }
    sleep 1
    awk '/^VmRSS/ {print $2}' "/proc/$agent/status"
    kill "$agent"; wait "$agent" 2>/dev/null || true; agent=
}
rss0=$(agent_rss 0)
rss10=$(agent_rss 10)

python3 - "$inst" "$call" "$idle" "$rss0" "$rss10" <<'PY'
import json, sys
i, c, m = (json.loads(a) for a in sys.argv[1:4])
rss0, rss10 = (int(a) for a in sys.argv[4:6])
print("                                  ferry            seed        ratio")
print(f"instantiate P50                {i['instantiate_p50_us']:8.2f} us")
print(f"instantiate P95                {i['instantiate_p95_us']:8.2f} us      9200 us   {9200 / i['instantiate_p95_us']:7.0f}x   (goal P95 < 50 us)")
print(f"instantiate P99                {i['instantiate_p99_us']:8.2f} us")
print(f"load from sealed cache P50/P95 {i['load_cached_p50_us']:8.1f} / {i['load_cached_p95_us']:.1f} us (read, verify, deserialize, pre-link, check)")
print(f"compile from scratch P50       {i['compile_p50_us'] / 1000:8.2f} ms")
print(f"call, trivial, empty input     {c['trivial_empty_ns']:8.0f} ns       300 ns   {300 / c['trivial_empty_ns']:7.1f}x   (seed: args_get)")
print(f"call, trivial, 13-byte input   {c['trivial_13b_ns']:8.0f} ns")
print(f"call, Modbus frame -> JSON     {c['decode_ns']:8.0f} ns")
print(f"memory per idle instance       {m['per_instance_kib']:8.1f} KiB   1843 KiB   {1843 / m['per_instance_kib']:7.0f}x   ({m['instances']} instances)")
print(f"ferry run RSS, no modules      {rss0 / 1024:8.1f} MiB")
print(f"ferry run RSS, 10 modules      {rss10 / 1024:8.1f} MiB   (+{(rss10 - rss0) / 1024:.1f} MiB)")
print("instance reuse: one live instance per module, replaced only after a fault (ferry_wasm_instantiations_total / ferry_wasm_calls_total); seed 91%")
PY
