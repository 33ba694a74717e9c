#!/usr/bin/env bash
# A no-change poll against a TUF repository on loopback: CPU time per poll
# and bytes fetched, for `ferry apply` (refresh, manifest, render, plan) and
# for python-tuf's `Updater.refresh()` as the peer, in the same run.
#
#   integration/bench/tuf-poll.sh [POLLS]        (default 50)
#
# Goal: < 5 ms CPU per ferry poll; only timestamp.json is downloaded (plus
# the 404 probe for the next root version that the TUF spec requires).
set -euo pipefail
cd "$(dirname "$0")/../.."
polls=${1:-50}
cargo build --release -q -p ferry
ferry=$PWD/target/release/ferry
source integration/bench/lib.sh
bench_venv
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/root"
bench_repo20 "$work"

# A static server that logs "path bytes" for every response.
port=$(free_port)
python3 - "$port" "$work/tuf" "$work/requests.log" <<'PY' &
import http.server, os, sys
port, root, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k): super().__init__(*a, directory=root, **k)
    def log_message(self, *a): pass
    def send_head(self):
        f = super().send_head()
        size = os.fstat(f.fileno()).st_size if f else 0
        with open(log, "a") as l: l.write(f"{self.path} {size}\n")
        return f
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
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
TOML
"$ferry" --config "$work/ferry.toml" apply --no-reboot >/dev/null

mkdir -p "$work/pymd"
cp "$work/tuf/metadata/1.root.json" "$work/pymd/root.json"
cat > "$work/refresh.py" <<PY
from tuf.ngclient import Updater
Updater("$work/pymd", "http://127.0.0.1:$port/metadata/", bootstrap=None).refresh()
PY
"$py" "$work/refresh.py"

: > "$work/requests.log"
python3 - "$polls" "$work" "$ferry" "$py" <<'PY'
import resource, subprocess, sys
polls, work, ferry, py = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
def run(cmd):
    before = cpu()
    for _ in range(polls):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return (cpu() - before) / polls * 1000
def traffic():
    rows = [l.split() for l in open(f"{work}/requests.log")]
    open(f"{work}/requests.log", "w").close()
    paths = sorted({p for p, _ in rows})
    return sum(int(b) for _, b in rows) / polls, paths
f = run([ferry, "--config", f"{work}/ferry.toml", "apply", "--no-reboot"])
fb, fp = traffic()
p = run([py, f"{work}/refresh.py"])
pb, pp = traffic()
print(f"no-change poll, {polls} polls, loopback HTTP")
print(f"ferry apply (refresh+render+plan): {f:7.2f} ms CPU/poll, {fb:7.0f} bytes/poll, paths {fp}")
print(f"python-tuf Updater.refresh()     : {p:7.2f} ms CPU/poll, {pb:7.0f} bytes/poll, paths {pp}")
print(f"ratio python-tuf/ferry CPU       : {p / f:.1f}x   (goal: ferry < 5 ms)")
PY
