#!/usr/bin/env bash
# A fleet on one machine (integration/fleet/sim.py): real `ferry run` agents
# and simulated pollers against one static TUF repository served by nginx
# (Debian), nudged through mosquitto; then git agents pulling signed commits
# over smart HTTP, nudged by the repository's post-receive hook.
#
#   integration/bench/fleet.sh [AGENTS] [SIMULATED] [sim.py options]
#                                   (default 100 900; e.g. --git-agents 20)
#
# Prints: release → nudge → applied on every agent (median, P99); with the
# simulated devices beside the agents, requests/s at nginx, bytes per idle
# poll, nginx's CPU and the agents' CPU per idle poll; and the time each
# rollout wave (5 %, 25 %, 100 % by the signed policy) takes to converge;
# push → nudge → applied on the git agents.
set -euo pipefail
cd "$(dirname "$0")/../.."
agents=${1:-100}
simulated=${2:-900}
for t in nginx mosquitto mosquitto_pub python3 git ssh-keygen; do
    command -v "$t" >/dev/null || { echo "missing tool: $t (apt-get install nginx mosquitto mosquitto-clients)" >&2; exit 1; }
done
cargo build --release -q -p ferry
source integration/bench/lib.sh
bench_venv
# Every agent and simulated device holds connections and files open.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 integration/fleet/sim.py --ferry "$PWD/target/release/ferry" --py "$py" \
    --agents "$agents" --simulated "$simulated" "${@:3}"
