#!/usr/bin/env bash
# Debian's dqlite-demo (go-dqlite 1.11 over libdqlite.so.0), unchanged, on
# dqlite-rs: three demo processes on loopback load our libdqlite.so.0
# through LD_LIBRARY_PATH, form a cluster through the demo's own join path,
# store and read keys over its HTTP API, show 3 voters in go-dqlite's
# `dqlite` shell, and survive a SIGKILL of one process, which rejoins when
# restarted. The automated version is crates/capi/tests/demo.rs.
#
#   scripts/demo-on-dqlite-rs.sh            # builds the library (release)
#   KEEP=1 scripts/demo-on-dqlite-rs.sh     # leave the processes running
#
# Needs: apt-get install -y go-dqlite curl
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
for tool in dqlite-demo dqlite curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y go-dqlite curl" >&2; exit 1; }
done

cargo build --release -p dqlite-capi
TARGET=${CARGO_TARGET_DIR:-target}
LIB=$(realpath "$TARGET/release/libdqlite.so")
WORK=$(mktemp -d /tmp/demo-on-dqlite-rs.XXXXXX)
mkdir -p "$WORK/lib"
ln -s "$LIB" "$WORK/lib/libdqlite.so.0"
echo "==> library: $LIB (as $WORK/lib/libdqlite.so.0)"

IP=${DEMO_IP:-127.0.11.1}
API=(0 18001 18002 18003)
DB=(0 19001 19002 19003)
PIDS=(0 0 0 0)

# stop_demo I: SIGKILL demo I and reap it quietly.
stop_demo() {
    local pid=${PIDS[$1]}
    if [ "$pid" -gt 0 ]; then
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        PIDS[$1]=0
    fi
}

cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "==> left running: pids ${PIDS[*]:1}; data and logs in $WORK"
        return
    fi
    for i in 1 2 3; do
        stop_demo "$i"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

start() {
    local i=$1
    local join=()
    [ "$i" -gt 1 ] && join=(--join "$IP:${DB[1]}")
    LD_LIBRARY_PATH="$WORK/lib" LIBDQLITE_TRACE=1 dqlite-demo \
        --api "$IP:${API[$i]}" --db "$IP:${DB[$i]}" --dir "$WORK/data$i" "${join[@]}" \
        >>"$WORK/demo$i.log" 2>&1 &
    PIDS[$i]=$!
}

# retry SECONDS COMMAND...: run COMMAND until it succeeds.
retry() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out: $*" >&2
            return 1
        fi
        sleep 0.5
    done
}

put() { [ "$(curl -s -m 10 -X PUT -d "$3" "http://$IP:${API[$1]}/$2")" = done ]; }
get() { [ "$(curl -s -m 10 "http://$IP:${API[$1]}/$2")" = "$3" ]; }
voters() {
    [ "$(dqlite -s "$IP:${DB[1]},$IP:${DB[2]},$IP:${DB[3]}" demo .cluster | grep -c '|voter$')" = 3 ]
}

echo "==> node 1 bootstraps"
start 1
retry 60 put 1 greeting hello
echo "==> nodes 2 and 3 join through node 1"
start 2
start 3
retry 120 voters
dqlite -s "$IP:${DB[1]}" demo .cluster
for i in 1 2 3; do
    grep -q "$LIB" "/proc/${PIDS[$i]}/maps"
    echo "    demo $i (pid ${PIDS[$i]}) runs on $(grep -m1 -o '/.*libdqlite[^ ]*' "/proc/${PIDS[$i]}/maps")"
done

echo "==> write through node 2, read through node 3"
retry 60 put 2 answer 42
retry 60 get 3 answer 42
curl -s "http://$IP:${API[3]}/answer"

echo "==> SIGKILL node 3; nodes 1 and 2 keep serving"
stop_demo 3
retry 60 put 1 after-kill yes
retry 60 get 2 after-kill yes

echo "==> restart node 3: it rejoins and catches up"
start 3
retry 120 get 3 after-kill yes
retry 120 voters
dqlite -s "$IP:${DB[1]}" demo .cluster
echo "==> done"
