#!/usr/bin/env bash
# The git source against git itself, in the same run:
#
#   integration/bench/git.sh [COMMITS]        (default 1000)
#
# 1. Verify a range of COMMITS SSH-signed commits: a fresh device pinned to
#    the first commit fetches and verifies the rest (`ferry plan`), against
#    `git log --format=%G?` over the same range (git runs ssh-keygen once
#    per commit).
# 2. No-change poll (refs only), over file:// and smart HTTP: `ferry plan`
#    when nothing changed, against `git fetch` into a bare clone.
# 3. No-change `ferry apply` of a tree of 20 files of 1 MiB: content
#    addresses from the blob map (state_dir/git/blob-sha256), against the
#    map removed before each apply (every file read and hashed, as every
#    poll did before the map); blobs and bytes read from the debug log.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
cargo build --release -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
export HOME=$work GIT_CONFIG_NOSYSTEM=1

ssh-keygen -q -t ed25519 -N '' -C admin@example -f "$work/admin"
mkdir -p "$work/trust" "$work/root"
echo "admin@example $(cat "$work/admin.pub")" > "$work/trust/allowed_signers"
git init -q -b main "$work/work"
git init -q --bare -b main "$work/srv/fleet.git"
cd "$work/work"
git config user.name admin; git config user.email admin@example
git config gpg.format ssh; git config user.signingkey "$work/admin"
git config gpg.ssh.allowedSignersFile "$work/trust/allowed_signers"
mkdir -p files
printf 'apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/app/n.conf, source: files/n.conf}\n' > ferry.yaml
echo 0 > files/n.conf
git add -A; git commit -q -S -m 0
first=$(git rev-parse HEAD)
echo "making $n signed commits..." >&2
for i in $(seq 1 "$((n - 1))"); do
    echo "$i" > files/n.conf
    git commit -q -S -am "$i"
done
git push -q "$work/srv/fleet.git" main
cd - >/dev/null

config() { # URL STATE
    cat > "$work/ferry.toml" <<TOML
state_dir = "$2"
[source]
kind = "git"
[source.git]
url = "$1"
trust_dir = "$work/trust"
pin = "$first"
[files]
root = "$work/root"
TOML
}
now() { python3 -c 'import time; print(time.perf_counter())'; }

# 1. Range verification.
config "file://$work/srv/fleet.git" "$work/state-range"
t0=$(now); "$ferry" --config "$work/ferry.toml" plan >/dev/null; t1=$(now)
g0=$(now); git -C "$work/work" log --format=%G? "$first..main" > "$work/g.txt"; g1=$(now)
good=$(grep -c '^G$' "$work/g.txt")
[ "$good" -eq "$((n - 1))" ] || { echo "git verified $good of $((n - 1))" >&2; exit 1; }

# 2. No-change polls.
"$ferry" --config "$work/ferry.toml" apply >/dev/null
poll() { # URL -> seconds per no-change `ferry plan`
    config "$1" "$work/state-range"
    "$ferry" --config "$work/ferry.toml" plan >/dev/null
    local a b; a=$(now)
    for _ in $(seq 20); do "$ferry" --config "$work/ferry.toml" plan >/dev/null; done
    b=$(now); python3 -c "print(($b - $a) / 20)"
}
gpoll() { # URL -> seconds per no-change `git fetch`
    rm -rf "$work/clone.git"; git clone -q --bare "$1" "$work/clone.git"
    local a b; a=$(now)
    for _ in $(seq 20); do git -C "$work/clone.git" fetch -q origin '+refs/heads/main:refs/heads/main'; done
    b=$(now); python3 -c "print(($b - $a) / 20)"
}
ffile=$(poll "file://$work/srv/fleet.git"); gfile=$(gpoll "file://$work/srv/fleet.git")
python3 integration/git/http_backend.py "$work/srv" "$work/port" & server=$!
for _ in $(seq 50); do [ -f "$work/port" ] && break; sleep 0.1; done
url="http://127.0.0.1:$(cat "$work/port")/fleet.git"
fhttp=$(poll "$url"); ghttp=$(gpoll "$url")

# 3. A tree of big files, no change.
cd "$work/work"
{
    echo "apiVersion: ferry.dev/v1"
    echo "resources:"
    for i in $(seq 20); do
        echo "  - {kind: file, path: /etc/app/big-$i.bin, source: files/big-$i.bin}"
        head -c 1048576 /dev/urandom > "files/big-$i.bin"
    done
} > ferry.yaml
git add -A; git commit -q -S -m "20 files of 1 MiB"
git push -q "$work/srv/fleet.git" main
cd - >/dev/null
config "file://$work/srv/fleet.git" "$work/state-range"
"$ferry" --config "$work/ferry.toml" apply >/dev/null
applies() { # MAP(keep|drop) -> "seconds-per-apply blobs-read bytes-read"
    local a b i
    "$ferry" --config "$work/ferry.toml" apply >/dev/null
    a=$(now)
    for i in $(seq 20); do
        [ "$1" = drop ] && rm -f "$work/state-range/git/blob-sha256"
        "$ferry" --config "$work/ferry.toml" apply >/dev/null 2>&1
    done
    b=$(now)
    [ "$1" = drop ] && rm -f "$work/state-range/git/blob-sha256"
    local line
    line=$("$ferry" --config "$work/ferry.toml" --log-level debug apply 2>&1 >/dev/null | grep 'git: revision reads')
    echo "$(python3 -c "print(($b - $a) / 20)") $(sed -n 's/.*blobs_read=\([0-9]*\).*/\1/p' <<<"$line") $(sed -n 's/.*bytes_read=\([0-9]*\).*/\1/p' <<<"$line")"
}
read -r mkeep bkeep ykeep <<<"$(applies keep)"
read -r mdrop bdrop ydrop <<<"$(applies drop)"

python3 - "$n" "$t0" "$t1" "$g0" "$g1" "$ffile" "$gfile" "$fhttp" "$ghttp" "$mkeep" "$bkeep" "$ykeep" "$mdrop" "$bdrop" "$ydrop" <<'PY'
import sys
n = int(sys.argv[1]); t0, t1, g0, g1, ff, gf, fh, gh, mk, bk, yk, md, bd, yd = map(float, sys.argv[2:])
f, g = t1 - t0, g1 - g0
print(f"verify {n - 1} SSH-signed commits (fetch + verify + plan)  ferry {f:6.2f} s ({f / (n - 1) * 1e3:.2f} ms/commit)   "
      f"git log %G? {g:6.2f} s ({g / (n - 1) * 1e3:.2f} ms/commit)   ratio {g / f:5.1f}x")
print(f"no-change poll, file://   ferry plan {ff * 1e3:6.1f} ms   git fetch {gf * 1e3:6.1f} ms   ratio {gf / ff:4.2f}x")
print(f"no-change poll, HTTP      ferry plan {fh * 1e3:6.1f} ms   git fetch {gh * 1e3:6.1f} ms   ratio {gh / fh:4.2f}x")
print(f"no-change apply, 20 files of 1 MiB: blob map {mk * 1e3:6.1f} ms ({bk:.0f} blobs, {yk:.0f} bytes read)   "
      f"without it {md * 1e3:6.1f} ms ({bd:.0f} blobs, {yd:.0f} bytes read)   ratio {md / mk:4.2f}x")
PY
