#!/usr/bin/env bash
# Memory of a disk-mode dqlite-rs node holding a 2 GiB database (issue 4).
#
# Starts one `dqlite-rs node --disk-mode` on 127.0.0.1, fills a database
# to --mib MiB through the Rust client (crates/node/examples/disk_fill.rs:
# each transaction is one INSERT ... SELECT randomblob(..) executed by the
# node, so the client sends little), checks it (aggregate over every row +
# PRAGMA integrity_check), stops the node (SIGTERM), restarts it on the same
# directory, checks again, and reports the node's peak RSS (VmHWM of the
# node pid) for each run, the sizes on disk and the wall times.
#
# Usage: scripts/disk-mode-2gib.sh [--mib 2100] [--threshold 128]
#            [--trailing 32] [--rows 64] [--row-kib 16] [--no-build] [--keep]
# Environment: CARGO_TARGET_DIR (default /work/target-disk when /work
# exists, else target), DISK_PORT (default 32400; the first free port from
# there is used), TMPDIR (where the data directory goes).
#
# A running node keeps about 64 MiB of applied consensus log entries in memory
# (older applied ones are read back from the log files); a restart also
# keeps only about 64 MiB of the committed entries after the last snapshot
# in memory, reading the rest back to apply them. See
# docs/disk-mode.md for the trade-off with snapshot I/O.
#
# Everything started here is killed on exit (trap); every wait is bounded;
# the data directory is removed unless --keep.

set -euo pipefail

MIB=2100
THRESHOLD=128
TRAILING=32
ROWS=64
ROW_KIB=16
BUILD=1
KEEP=0
COMMAND_LINE="scripts/disk-mode-2gib.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --mib) MIB="$2"; shift 2 ;;
        --threshold) THRESHOLD="$2"; shift 2 ;;
        --trailing) TRAILING="$2"; shift 2 ;;
        --rows) ROWS="$2"; shift 2 ;;
        --row-kib) ROW_KIB="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "disk-mode-2gib.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    if [ -d /work ]; then CARGO_TARGET_DIR=/work/target-disk; else CARGO_TARGET_DIR="$ROOT/target"; fi
fi
export CARGO_TARGET_DIR
BIN="$CARGO_TARGET_DIR/release/dqlite-rs"
FILL="$CARGO_TARGET_DIR/release/examples/disk_fill"

log() { echo "disk-mode-2gib.sh: $*" >&2; }
die() { log "$*"; exit 1; }

if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release -p dqlite-rs -p dqlite-node --example disk_fill)
fi
[ -x "$BIN" ] || die "no $BIN (build with cargo build --release -p dqlite-rs)"
[ -x "$FILL" ] || die "no $FILL (cargo build --release -p dqlite-node --example disk_fill)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/disk-2gib.XXXXXX")"
NODE_PID=""
SAMPLER_PID=""
cleanup() {
    for pid in $SAMPLER_PID $NODE_PID; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=${DISK_PORT:-32400}
for _ in $(seq 1 200); do
    port_free "$PORT" && break
    PORT=$((PORT + 1))
done
port_free "$PORT" || die "no free port found"
ADDR="127.0.0.1:$PORT"

status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

start_node() {
    local run=$1
    "$BIN" node --disk-mode --address "$ADDR" --dir "$TMP/n1" \
        --snapshot-threshold "$THRESHOLD" --snapshot-trailing "$TRAILING" \
        >>"$TMP/node.log" 2>&1 &
    NODE_PID=$!
    # RSS samples every second, for the report (bounded by the node's life
    # and by 2 hours).
    (
        for _ in $(seq 1 7200); do
            kill -0 "$NODE_PID" 2>/dev/null || exit 0
            echo "$(date +%s) $(status_kib "$NODE_PID" VmRSS)" >>"$TMP/rss-$run.txt"
            sleep 1
        done
    ) &
    SAMPLER_PID=$!
    for _ in $(seq 1 300); do
        kill -0 "$NODE_PID" 2>/dev/null || { tail -20 "$TMP/node.log" >&2; die "node exited at start"; }
        port_free "$PORT" || return 0
        sleep 0.1
    done
    die "node did not listen on $ADDR within 30 s"
}

stop_node() {
    local run=$1
    HWM[$run]=$(status_kib "$NODE_PID" VmHWM)
    RSS_END[$run]=$(status_kib "$NODE_PID" VmRSS)
    kill -TERM "$NODE_PID"
    for _ in $(seq 1 300); do
        kill -0 "$NODE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$NODE_PID" 2>/dev/null; then
        log "node did not stop within 30 s of SIGTERM: SIGKILL"
        kill -9 "$NODE_PID" 2>/dev/null || true
    fi
    wait "$NODE_PID" 2>/dev/null || true
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    NODE_PID=""
    SAMPLER_PID=""
}

declare -a HWM RSS_END
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)

echo "== machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), data in $TMP ($(df -h "$TMP" | awk 'NR == 2 { print $1 }'))"
echo "== command: $COMMAND_LINE"
echo "== node: $BIN node --disk-mode --address $ADDR --dir $TMP/n1 --snapshot-threshold $THRESHOLD --snapshot-trailing $TRAILING"

echo "== run 1: fill to $MIB MiB in transactions of $ROWS rows x $ROW_KIB KiB, then check"
start_node 1
T1=$(now)
timeout 3600 "$FILL" fill "$ADDR" --mib "$MIB" --rows "$ROWS" --row-kib "$ROW_KIB"
T2=$(now)
timeout 1200 "$FILL" check "$ADDR"
T3=$(now)
stop_node 1
T4=$(now)
DB_BYTES=$(du -sb "$TMP/n1/db" | cut -f1)
RAFT_BYTES=$(du -sb "$TMP/n1/raft" 2>/dev/null | cut -f1 || echo 0)
echo "== on disk after run 1: db/ $((DB_BYTES / 1048576)) MiB, raft/ $((RAFT_BYTES / 1048576)) MiB"
ls -l "$TMP/n1/db" "$TMP/n1/raft/snap" 2>/dev/null | sed 's/^/   /'

echo "== run 2: restart on the same directory, check"
T5=$(now)
start_node 2
T6=$(now)
timeout 1200 "$FILL" check "$ADDR"
T7=$(now)
stop_node 2

max_rss() { sort -k2 -n "$TMP/rss-$1.txt" 2>/dev/null | tail -1 | awk '{ print int($2 / 1024) }'; }
echo
echo "== result"
echo "database: $((DB_BYTES / 1048576)) MiB in $TMP/n1/db; consensus dir $((RAFT_BYTES / 1048576)) MiB"
echo "run 1: fill $(secs "$T1" "$T2") s, check $(secs "$T2" "$T3") s, stop $(secs "$T3" "$T4") s; node peak RSS (VmHWM) $((HWM[1] / 1024)) MiB, RSS at stop $((RSS_END[1] / 1024)) MiB, largest 1 s sample $(max_rss 1) MiB"
echo "run 2: start $(secs "$T5" "$T6") s, check $(secs "$T6" "$T7") s; node peak RSS (VmHWM) $((HWM[2] / 1024)) MiB, RSS at stop $((RSS_END[2] / 1024)) MiB"
echo "wall: $(secs "$T0" "$(now)") s"
if grep -qiE "warn|error" "$TMP/node.log"; then
    echo "node log warnings/errors:"
    grep -iE "warn|error" "$TMP/node.log" | tail -20 | sed 's/^/   /'
fi
