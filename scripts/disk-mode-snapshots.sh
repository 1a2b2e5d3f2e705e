#!/usr/bin/env bash
# Disk-mode snapshots of a large database on 3 nodes (issue 9): disk usage
# and write latency while snapshots are taken.
#
# Starts 3 `dqlite-rs node --disk-mode` processes on 127.0.0.1 (node 1
# bootstraps, the others join), fills database `big` to --mib MiB through
# the Rust client (crates/node/examples/disk_fill.rs, 1 MiB transactions),
# then runs `dqlite-rs bench --workload kvwrite --workers 1` for --duration
# seconds while the nodes keep taking snapshots (every --threshold entries).
# Reports: the bench's latencies (max is the figure that matters), leader
# changes during the bench (from the node logs), snapshots taken during
# the bench, and each node's disk usage (du of db/, raft/snap, raft/log)
# against the database size.
#
# With --lagging, node 3 is stopped before the fill and started again
# before the bench: it catches up through a streamed snapshot while the
# bench runs.
#
# Usage: scripts/disk-mode-snapshots.sh [--mib 2100] [--duration 30]
#            [--threshold 128] [--trailing 32] [--lagging] [--no-build] [--keep]
# Environment: CARGO_TARGET_DIR (default target), SNAP_PORT (default 32500),
# TMPDIR (where the data directories go).
#
# Everything started here is killed on exit (trap); every wait is bounded;
# the data directories are removed unless --keep.

set -euo pipefail

MIB=2100
DURATION=30
THRESHOLD=128
TRAILING=32
LAGGING=0
BUILD=1
KEEP=0
COMMAND_LINE="scripts/disk-mode-snapshots.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --mib) MIB="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --threshold) THRESHOLD="$2"; shift 2 ;;
        --trailing) TRAILING="$2"; shift 2 ;;
        --lagging) LAGGING=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "disk-mode-snapshots.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release/dqlite-rs"
FILL="$CARGO_TARGET_DIR/release/examples/disk_fill"

log() { echo "disk-mode-snapshots.sh: $*" >&2; }
die() { log "$*"; exit 1; }

if [ "$BUILD" = 1 ]; then
    # Two commands: one with --example builds only the example.
    (cd "$ROOT" && cargo build --release -p dqlite-rs && cargo build --release -p dqlite-node --example disk_fill)
fi
[ -x "$BIN" ] || die "no $BIN"
[ -x "$FILL" ] || die "no $FILL"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/disk-snap.XXXXXX")"
declare -a PIDS=("" "" "" "")
cleanup() {
    for pid in "${PIDS[@]}"; do
        [ -n "$pid" ] || continue
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=${SNAP_PORT:-32500}
declare -a ADDR
for i in 1 2 3; do
    for _ in $(seq 1 200); do
        port_free "$PORT" && break
        PORT=$((PORT + 1))
    done
    port_free "$PORT" || die "no free port found"
    ADDR[$i]="127.0.0.1:$PORT"
    PORT=$((PORT + 1))
done
ALL="${ADDR[1]},${ADDR[2]},${ADDR[3]}"

start_node() { # I [--join ADDRESS | --id 1]
    local i=$1
    shift
    "$BIN" node --disk-mode --address "${ADDR[$i]}" --dir "$TMP/n$i" \
        --snapshot-threshold "$THRESHOLD" --snapshot-trailing "$TRAILING" "$@" \
        >>"$TMP/n$i.log" 2>&1 &
    PIDS[$i]=$!
    for _ in $(seq 1 300); do
        kill -0 "${PIDS[$i]}" 2>/dev/null || { tail -20 "$TMP/n$i.log" >&2; die "node $i exited at start"; }
        port_free "${ADDR[$i]#*:}" || return 0
        sleep 0.1
    done
    die "node $i did not listen within 30 s"
}

stop_node() { # I
    local i=$1
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "${PIDS[$i]}" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
    PIDS[$i]=""
}

voters() { "$BIN" cluster -s "$ALL" list 2>/dev/null | grep -c voter || true; }
wait_voters() {
    for _ in $(seq 1 120); do
        [ "$(voters)" -ge 3 ] && return 0
        sleep 0.5
    done
    die "not 3 voters after 60 s"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
du_b() { du -sB1 "$1" 2>/dev/null | cut -f1 || echo 0; }
count() { grep -c "$1" "$2" 2>/dev/null || true; }
# Snapshots taken by the node at $1, from its /metrics.
taken() {
    curl -s --max-time 5 "http://$1/metrics" 2>/dev/null |
        awk '/^dqlite_raft_snapshots_total\{kind="taken"\}/ { print $2; found = 1 } END { if (!found) print 0 }'
}

echo "== machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(free -g | awk '/Mem:/ { print $2 }') GiB RAM, data in $TMP ($(df -h "$TMP" | awk 'NR == 2 { print $1 }'))"
echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== command: $COMMAND_LINE"
echo "== nodes: $BIN node --disk-mode --snapshot-threshold $THRESHOLD --snapshot-trailing $TRAILING at $ALL"

start_node 1 --id 1
sleep 0.5
start_node 2 --join "${ADDR[1]}"
start_node 3 --join "${ADDR[1]}"
wait_voters
FILL_ADDRS="$ALL"
if [ "$LAGGING" = 1 ]; then
    stop_node 3
    FILL_ADDRS="${ADDR[1]},${ADDR[2]}"
    echo "== node 3 stopped: it will catch up through a snapshot"
fi

echo "== fill to $MIB MiB in 1 MiB transactions"
timeout 3600 "$FILL" fill "${ADDR[1]}" --mib "$MIB" --rows 64 --row-kib 16

if [ "$LAGGING" = 1 ]; then
    start_node 3
fi
declare -a LEADER_BEFORE SNAPS_BEFORE
for i in 1 2 3; do
    LEADER_BEFORE[$i]=$(count "leader changed" "$TMP/n$i.log")
    SNAPS_BEFORE[$i]=$(taken "${ADDR[$i]}")
done
echo "== bench: kvwrite, 1 worker, $DURATION s, load before $(cut -d' ' -f1-3 /proc/loadavg)"
timeout $((DURATION + 300)) "$BIN" bench -s "$ALL" --workload kvwrite --workers 1 \
    --duration "$DURATION" --database bench --json --progress 0 >"$TMP/bench.json"
cat "$TMP/bench.json"
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$LAGGING" = 1 ]; then
    # Bounded: the catch-up of a 2 GiB node takes a few minutes at most.
    for _ in $(seq 1 600); do
        grep -q "installing snapshot.*done" "$TMP/n3.log" && break
        sleep 1
    done
    grep -E "(sending|receiving|installing) snapshot.*done" "$TMP"/n*.log | sed 's/^/   /' || true
fi
declare -a SNAPS_AFTER
for i in 1 2 3; do
    SNAPS_AFTER[$i]=$(taken "${ADDR[$i]}")
done
sleep 2
timeout 600 "$FILL" check "${ADDR[1]}" >"$TMP/check.txt" 2>&1 || true
cat "$TMP/check.txt"
SIZE=$(awk '/database/ { for (i = 1; i <= NF; i++) if ($i == "MiB,") { print $(i-1); exit } }' "$TMP/check.txt")
echo
echo "== result"
for i in 1 2 3; do
    d=$TMP/n$i
    echo "node $i: db/ $(mib "$(du_b "$d/db")") MiB, raft/snap $(du_b "$d/raft/snap") bytes, raft/log $(mib "$(du_b "$d/raft/log")") MiB, whole dir $(mib "$(du_b "$d")") MiB; leader changes during the bench $(( $(count "leader changed" "$d.log") - LEADER_BEFORE[$i] )), snapshots taken during the bench $(( ${SNAPS_AFTER[$i]%.*} - ${SNAPS_BEFORE[$i]%.*} ))"
done
echo "database (SQLite page_count x page_size): ${SIZE:-?} MiB"
if grep -qiE "WARN|ERROR" "$TMP"/n*.log; then
    echo "node log warnings/errors (last 20):"
    grep -hiE "WARN|ERROR" "$TMP"/n*.log | tail -20 | sed 's/^/   /'
fi
