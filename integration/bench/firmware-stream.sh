#!/usr/bin/env bash
# Streams a large firmware image into an A/B slot file with ferry and with
# the baseline `curl … | tee slot | sha256sum` (image served over loopback
# HTTP), in the same run; prints throughput, peak RSS and the ratio.
#
#   integration/bench/firmware-stream.sh [SIZE_MIB]      (default 1024)
#
# ferry's path today: the image comes from a dir source (ferry has no HTTP
# source yet), is staged into the content-addressed store (hashed while
# written), then streamed from the store into the inactive slot (hashed
# while written) and read back (hashed again): three passes over the data
# where the baseline makes one. The ratio below measures that.
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
mkdir -p "$work/repo/images" "$work/root"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/repo/images/os.img"
sha=$(sha256sum "$work/repo/images/os.img" | cut -d' ' -f1)
len=$(stat -c %s "$work/repo/images/os.img")
cat > "$work/repo/ferry.yaml" <<YAML
apiVersion: ferry.dev/v1
resources:
  - {kind: firmware, name: os, version: "1", source: images/os.img, sha256: "$sha", length: $len}
YAML
grub-editenv "$work/grubenv" create
grub-editenv "$work/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
echo "rauc.slot=A" > "$work/cmdline"
echo boot-1 > "$work/boot_id"
cat > "$work/ferry.toml" <<TOML
state_dir = "$work/state"
[source]
kind = "dir"
[source.dir]
path = "$work/repo"
insecure = true
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

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/repo/images" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$port/os.img" && break; sleep 0.1; done

sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
measure() { # label, command...; prints seconds and peak RSS (KiB)
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$work/time.$label" "$@" >/dev/null
    read -r secs rss < "$work/time.$label"
    echo "$secs $rss"
}
read -r base_s base_rss < <(measure curl sh -c "curl -s http://127.0.0.1:$port/os.img | tee $work/slot-baseline.img | sha256sum")
read -r ferry_s ferry_rss < <(measure ferry "$ferry" --config "$work/ferry.toml" apply --no-reboot)
cmp -s "$work/repo/images/os.img" "$work/slot-b.img" || { echo "slot B does not hold the image" >&2; exit 1; }

python3 - "$size_mib" "$base_s" "$base_rss" "$ferry_s" "$ferry_rss" <<'PY'
import sys
mib, bs, brss, fs, frss = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"image {mib:.0f} MiB")
print(f"baseline curl | tee | sha256sum : {mib / bs:8.1f} MiB/s  (sh+curl peak RSS {brss / 1024:.1f} MiB)")
print(f"ferry apply (store + slot)      : {mib / fs:8.1f} MiB/s  (peak RSS {frss / 1024:.1f} MiB)")
print(f"ratio ferry/baseline            : {bs / fs:.2f}x   (goal >= 0.9x, RSS < 32 MiB)")
PY
