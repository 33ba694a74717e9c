#!/usr/bin/env bash
# Field ingestion: CoAP and Modbus TCP into the rule engine, on loopback.
#
#   integration/bench/ingest.sh [COUNT] [SECONDS] [BLOCKS]   (default 2000, 5, 32)
#
# 1. CoAP confirmable POST -> rule -> MQTT publish received (mosquitto),
#    one request at a time: average and P99 (seed: 8.7 ms average, 22.1 ms
#    P99; goal P99 < 1 ms); the ACK alone beside it.
# 2. Sustained CoAP events/s with 1 and with 100 clients (each client one
#    exchange in flight, NSTART=1), every event published by the rule.
# 3. Modbus: registers read per second from one pymodbus server (BLOCKS
#    blocks of 125 holding registers, each every 10 ms, the shortest period,
#    on the device's one connection), and the time from the server
#    answering a read to the rule's publish of it.
set -euo pipefail
cd "$(dirname "$0")/../.."
count=${1:-2000}
seconds=${2:-5}
blocks=${3:-32}
cargo build --release -q -p ferry
cargo build --release -q -p ferry-ingest --example ingest_bench
ferry=$PWD/target/release/ferry
bench=$PWD/target/release/examples/ingest_bench
source integration/bench/lib.sh
bench_venv
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nmax_queued_messages 0\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.3

# CoAP.
printf 'ON topic ~ "coap/bench/in" and exists(seq) THEN publish("bench/out", "{seq}")\n' > "$work/coap.rules"
"$ferry" rules run "$work/coap.rules" --coap 127.0.0.1:0 --mqtt "mqtt://127.0.0.1:$port" \
    --client-id bench-coap 2> "$work/coap.err" & pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/coap.err" && break; sleep 0.05; done
addr=$(sed -n 's/^coap: listening on //p' "$work/coap.err")
echo "coap latency      $("$bench" coap-latency "$addr" "$port" "$count")   (seed: avg 8.7 ms, P99 22.1 ms; goal P99 < 1 ms)"
for clients in 1 100; do
    echo "coap $clients client(s)  $("$bench" coap-throughput "$addr" "$port" "$clients" "$seconds")"
done

# Modbus.
mport=$(free_port)
SIM_TRACE="$work/trace" "$py" integration/modbus/sim.py "$mport" > "$work/sim.out" & pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/sim.out" && break; sleep 0.05; done
{
    printf '[[modbus]]\nname = "plc1"\naddress = "127.0.0.1:%s"\n' "$mport"
    for b in $(seq "$blocks"); do
        printf '[[modbus.blocks]]\nname = "b%s"\nkind = "holding"\nstart = 0\ncount = 125\nperiod = "10ms"\nfields = [{ name = "seq", offset = 0, type = "u32" }]\n' "$b"
    done
} > "$work/plc.toml"
printf 'ON topic ~ "modbus/plc1/+" THEN publish("bench/modbus", "{seq}")\n' > "$work/modbus.rules"
"$ferry" rules run "$work/modbus.rules" --modbus "$work/plc.toml" --mqtt "mqtt://127.0.0.1:$port" \
    --client-id bench-modbus 2>/dev/null & pids+=($!)
sleep 1
echo "modbus            $("$bench" modbus "$work/trace" "$port" "$seconds" 125)   ($blocks blocks x 125 registers every 10 ms from one pymodbus server)"
