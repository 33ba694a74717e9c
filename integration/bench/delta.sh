#!/usr/bin/env bash
# Delta updates, ferry beside casync (Debian) in the same run: the same
# image pair, the same web server (nginx, Debian), both seeded from v1.
#
#   integration/bench/delta.sh [SIZE_MIB]      (default 1024)
#
# v1: half real files of this machine (/usr/lib, /usr/share: compressible),
# half pseudo-random (AES-CTR of zeros: incompressible). v2: v1 with a 4 KiB
# insertion near the start (shifting every later offset) and 64 scattered
# edits of 16–256 KiB (about 1% of the image).
#
# Publisher: `ferry chunk` and `casync make` of v1 and v2 into their stores.
# Device: slot A holds v1; ferry applies a TUF revision (python-tuf) whose
# firmware resource has a chunk index, writing slot B; casync extracts v2
# with slot A as seed. Page caches are dropped before each (when root).
# Measured: bytes served by nginx to each (its access log), wall time to a
# verified v2 in the slot, peak RSS; and `zstd --patch-from` as the floor of
# a binary diff.
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-1024}
for t in casync nginx zstd openssl python3 /usr/bin/time grub-editenv curl sha256sum; do
    command -v "$t" >/dev/null || { echo "missing tool: $t (apt-get install casync nginx-light zstd grub-common curl time)" >&2; exit 1; }
done
cargo build --release -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ferry-delta.XXXXXX")
trap '[ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
source integration/bench/lib.sh
bench_venv
size=$((size_mib * 1024 * 1024))
half=$((size / 2))
www=$work/www
mkdir -p "$www" "$work/root" "$work/tmp"

echo "== images ($size_mib MiB)" >&2
{
    find /usr/lib /usr/share -xdev -type f -size +16k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null | head -c "$half" || true
    openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 0 </dev/zero 2>/dev/null | head -c "$half" || true
} > "$work/v1.img"
python3 - "$work/v1.img" "$work/v2.img" <<'PY'
import random, sys
src, dst = sys.argv[1], sys.argv[2]
rnd = random.Random(2026)
size = __import__("os").path.getsize(src)
with open(src, "rb") as a, open(dst, "wb") as b:
    at = 1 << 20
    b.write(a.read(at))
    b.write(rnd.randbytes(4096))
    while block := a.read(16 << 20):
        b.write(block)
edited = 0
with open(dst, "r+b") as b:
    for _ in range(64):
        n = rnd.randint(16, 256) * 1024
        b.seek(rnd.randrange(2 << 20, size - n))
        b.write(rnd.randbytes(n))
        edited += n
print(f"v2: 4 KiB inserted at 1 MiB, 64 edits, {edited} bytes ({100 * edited / size:.2f}%)", file=sys.stderr)
PY
len=$(stat -c %s "$work/v2.img")

echo "== publishing" >&2
t0=$(date +%s.%N)
"$ferry" chunk "$work/v1.img" --out "$www/ferry" >/dev/null
"$ferry" chunk "$work/v2.img" --out "$www/ferry" --json > "$work/chunk.json"
t1=$(date +%s.%N)
casync make --store="$www/casync.castr" "$www/v1.caibx" "$work/v1.img" >/dev/null
casync make --store="$www/casync.castr" "$www/v2.caibx" "$work/v2.img" >/dev/null
t2=$(date +%s.%N)

port=$(free_port)
mkdir -p "$work/src/images" "$work/src/ferry"
ln "$work/v2.img" "$work/src/images/os.img"
cp "$www/ferry/v2.img.chunks" "$work/src/images/os.img.chunks"
cat > "$work/src/ferry/manifest.yaml" <<YAML
apiVersion: ferry.dev/v1
resources:
  - kind: firmware
    name: os
    version: "2"
    source: images/os.img
    chunks: {index: images/os.img.chunks, store: "http://127.0.0.1:$port/ferry/chunks/"}
YAML
repo="$py integration/tuf/repo.py"
$repo init "$www/tuf"
$repo tree "$www/tuf" "$work/src"
# The full image is served (for a fallback) but need not be stored three times.
for f in "$www"/tuf/targets/images/*os.img; do ln -f "$work/v2.img" "$f"; done

cat > "$work/nginx.conf" <<NGINX
daemon on;
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 256; }
http {
    log_format bench '\$request_uri \$status \$body_bytes_sent';
    access_log $work/access.log bench;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    sendfile on;
    keepalive_requests 1000000;
    types { application/octet-stream caibx cacnk zst img; }
    server { listen 127.0.0.1:$port; root $www; }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
wait_http "http://127.0.0.1:$port/v2.caibx"

# The device: slot A holds v1, GRUB boots it.
cp "$work/v1.img" "$work/slot-a.img"
grub-editenv "$work/grubenv" create
grub-editenv "$work/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
echo "rauc.slot=A" > "$work/cmdline"
echo boot-1 > "$work/boot_id"
cat > "$work/ferry.toml" <<TOML
state_dir = "$work/state"
[source]
kind = "tuf"
[source.tuf]
metadata_url = "http://127.0.0.1:$port/tuf/metadata"
targets_url = "http://127.0.0.1:$port/tuf/targets"
root = "$www/tuf/metadata/1.root.json"
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

served() { # bytes nginx sent since line $1 of the access log
    tail -n +"$(($1 + 1))" "$work/access.log" | awk '{ s += $3 } END { print s + 0 }'
}
lines() { wc -l < "$work/access.log"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
measure() { # label, command...: "seconds peak-RSS-KiB cpu-seconds"
    local label=$1; shift
    /usr/bin/time -f "%e %M %U %S" -o "$work/time.$label" "$@" >/dev/null 2>"$work/err.$label" || { cat "$work/err.$label" >&2; exit 1; }
    awk '{ print $1, $2, $3 + $4 }' "$work/time.$label"
}

echo "== casync extract" >&2
cold; mark=$(lines)
read -r c_s c_rss c_cpu < <(measure casync casync extract --store="http://127.0.0.1:$port/casync.castr" --seed="$work/slot-a.img" "http://127.0.0.1:$port/v2.caibx" "$work/casync-b.img")
c_bytes=$(served "$mark")
cmp -s "$work/v2.img" "$work/casync-b.img" || { echo "casync did not produce v2" >&2; exit 1; }
rm -f "$work/casync-b.img"

echo "== ferry apply" >&2
plan=$("$ferry" --config "$work/ferry.toml" plan --json | python3 -c 'import json,sys; d=json.load(sys.stdin)["steps"][0]["download"]; print(d["full"], d.get("delta", -1))')
cold; mark=$(lines)
read -r f_s f_rss f_cpu < <(measure ferry "$ferry" --config "$work/ferry.toml" apply --no-reboot)
f_bytes=$(served "$mark")
cmp -s "$work/v2.img" "$work/slot-b.img" || { echo "ferry did not write v2 into slot B" >&2; exit 1; }
"$ferry" --config "$work/ferry.toml" audit list --json --event delta > "$work/audit.json"

# The floor takes minutes (12 for 1 GiB on 2 cores): DELTA_BENCH_PATCH=0 skips it.
z0=$(date +%s.%N)
if [ "${DELTA_BENCH_PATCH:-1}" != 0 ]; then
    echo "== zstd --patch-from (floor)" >&2
    zstd -q -19 --long=31 -T0 --patch-from="$work/v1.img" "$work/v2.img" -o "$work/patch.zst" 2>/dev/null
    z_bytes=$(stat -c %s "$work/patch.zst")
else
    z_bytes=0
fi
z1=$(date +%s.%N)

python3 - <<PY
import json
size = $len
c_bytes, f_bytes, z_bytes = $c_bytes, $f_bytes, $z_bytes
audit = json.load(open("$work/audit.json"))[-1]["details"]
chunk = json.load(open("$work/chunk.json"))
full, planned = "$plan".split()
print(f"image: {size / 2**20:.0f} MiB; ferry store {chunk['chunks']} chunks ({chunk['distinct']} distinct), "
      f"published in {$t1 - $t0:.1f} s (casync make: {$t2 - $t1:.1f} s)")
print(f"{'':32} {'downloaded':>14} {'% of image':>10} {'time':>8} {'CPU':>7} {'peak RSS':>9}")
print(f"{'casync extract --seed':32} {c_bytes:>14,} {100 * c_bytes / size:>9.2f}% {$c_s:>7.2f}s {$c_cpu:>6.2f}s {$c_rss / 1024:>6.1f} MiB")
print(f"{'ferry apply (TUF, delta)':32} {f_bytes:>14,} {100 * f_bytes / size:>9.2f}% {$f_s:>7.2f}s {$f_cpu:>6.2f}s {$f_rss / 1024:>6.1f} MiB")
if z_bytes:
    print(f"{'zstd -19 --long=31 --patch-from':32} {z_bytes:>14,} {100 * z_bytes / size:>9.2f}% {$z1 - $z0:>7.2f}s   (to make the patch)")
print(f"ratio bytes ferry/casync: {f_bytes / c_bytes:.3f}   time ferry/casync: {$f_s / $c_s:.3f}   "
      f"(goals: <= 1, ferry <= 3% of the image, RSS < 32 MiB)")
print(f"ferry plan said: {int(planned):,} by delta of {int(full):,}; audit: fetched {audit['bytes_fetched']:,}, "
      f"reused {audit['bytes_reused']:,}, chunks fetched {audit['chunks_fetched']} of {audit['chunks']}")
PY
