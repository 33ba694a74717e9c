# Shared helpers of the benchmark scripts (sourced).

# The python-tuf venv that integration/run-tests also uses; sets $py.
bench_venv() {
    local venv=target/fixture-venv
    if ! "$venv/bin/python" -c 'import tuf, cryptography, pymodbus' >/dev/null 2>&1; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q -r integration/tuf/requirements.txt
    fi
    py=$PWD/$venv/bin/python
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_repo20 WORK: a TUF repository in WORK/tuf with 20 file targets and a
# manifest (target ferry/manifest.yaml) that installs them.
bench_repo20() {
    local work=$1 i
    mkdir -p "$work/files"
    {
        echo "apiVersion: ferry.dev/v1"
        echo "resources:"
        for i in $(seq 20); do
            echo "  - {kind: file, path: /etc/app/$i.conf, source: files/$i}"
            echo "value = $i" > "$work/files/$i"
        done
    } > "$work/manifest.yaml"
    "$py" integration/tuf/repo.py init "$work/tuf"
    for i in $(seq 20); do "$py" integration/tuf/repo.py target "$work/tuf" "files/$i" "$work/files/$i"; done
    "$py" integration/tuf/repo.py target "$work/tuf" ferry/manifest.yaml "$work/manifest.yaml"
}

# wait_http URL: until it answers.
wait_http() {
    for _ in $(seq 50); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "no answer from $1" >&2
    return 1
}
