#!/usr/bin/env bash
# Streams a large firmware image into an A/B slot file with ferry and with
# the baseline `curl … | tee slot | sha256sum` (image served over loopback
# HTTP), in the same run; prints throughput, peak RSS and the ratio.
#
#   integration/bench/firmware-stream.sh [SIZE_MIB]      (default 1024)
#
# ferry's path: the image is a target of a TUF repository (built with
# python-tuf) served over loopback HTTP; ferry refreshes the metadata,
# streams the target into the content-addressed store (length and hashes
# checked while writing), then streams it from the store into the inactive
# slot (hashed while written) and reads it back (hashed again): three passes
# over the data where the baseline makes one. The ratio below measures that.
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-1024}
for t in curl python3 sha256sum /usr/bin/time grub-editenv; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
cargo build --release -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
source integration/bench/lib.sh
bench_venv
mkdir -p "$work/root"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/os.img"
len=$(stat -c %s "$work/os.img")
cat > "$work/ferry.yaml" <<YAML
apiVersion: ferry.dev/v1
resources:
  - {kind: firmware, name: os, version: "1", source: images/os.img}
YAML
repo="$py integration/tuf/repo.py"
$repo init "$work/tuf"
$repo target "$work/tuf" images/os.img "$work/os.img"
$repo target "$work/tuf" ferry/manifest.yaml "$work/ferry.yaml"
sha=$(sha256sum "$work/os.img" | cut -d' ' -f1)
grub-editenv "$work/grubenv" create
grub-editenv "$work/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
echo "rauc.slot=A" > "$work/cmdline"
echo boot-1 > "$work/boot_id"
port=$(free_port)
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/tuf" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$port/targets/images/$sha.os.img" && break; sleep 0.1; done

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
[firmware]
bootenv = "grub"
grubenv = "$work/grubenv"
cmdline = "$work/cmdline"
boot_id = "$work/boot_id"
reboot_command = ["true"]
slots = [{ name = "A", device = "$work/slot-a.img", size = $((len * 2)) }, { name = "B", device = "$work/slot-b.img", size = $((len * 2)) }]
TOML

sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
measure() { # label, command...; prints seconds and peak RSS (KiB)
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$work/time.$label" "$@" >/dev/null
    read -r secs rss < "$work/time.$label"
    echo "$secs $rss"
}
read -r base_s base_rss < <(measure curl sh -c "curl -s http://127.0.0.1:$port/targets/images/$sha.os.img | tee $work/slot-baseline.img | sha256sum")
read -r ferry_s ferry_rss < <(measure ferry "$ferry" --config "$work/ferry.toml" apply --no-reboot)
cmp -s "$work/os.img" "$work/slot-b.img" || { echo "slot B does not hold the image" >&2; exit 1; }

python3 - "$size_mib" "$base_s" "$base_rss" "$ferry_s" "$ferry_rss" <<'PY'
import sys
mib, bs, brss, fs, frss = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"image {mib:.0f} MiB")
print(f"baseline curl | tee | sha256sum : {mib / bs:8.1f} MiB/s  (sh+curl peak RSS {brss / 1024:.1f} MiB)")
print(f"ferry apply (TUF, store + slot) : {mib / fs:8.1f} MiB/s  (peak RSS {frss / 1024:.1f} MiB)")
print(f"ratio ferry/baseline            : {bs / fs:.2f}x   (goal >= 0.9x, RSS < 32 MiB)")
PY
