#!/usr/bin/env bash
# Compare dqlite-rs with C dqlite on this machine: `dqlite-rs bench`
# (go-dqlite's kvwrite and kvreadwrite workloads; by default kvwrite with
# 1, 8 and 64 workers and kvreadwrite with 8) against
#   - a 1-node and a 3-node C dqlite 1.11 cluster (Debian's dqlite-demo),
#   - a 1-node and a 3-node dqlite-rs cluster (dqlite-rs node; the 3-node
#     case needs `dqlite-rs node --join` and is skipped, with a note, when
#     the binary has no such flag).
# One cluster runs at a time; every process listens on 127.0.0.1 only,
# on ports found free in a range, with data in a temporary directory on
# the same filesystem for both implementations; a stopped cluster's data
# are deleted and the disk synced before the next cluster starts.
# Everything started here is stopped on exit (trap), and every wait is
# bounded.
#
# Usage: scripts/bench.sh [--duration SECONDS] [--workers "1 8"]
#                         [--workload kvwrite|kvreadwrite] [--no-build]
#                         [--results FILE] [--nodes "1 3"]
#                         [--prefill-mib N] [--follower-reads]
# (--workers or --workload runs only that workload with those workers;
# --nodes only those cluster sizes; --prefill-mib first grows each case's
# database by N MiB of 1 KiB rows in 16 MiB transactions, so that the run
# goes on while snapshots of a database that size are taken: compare the
# max latency.)
# --follower-reads: instead, a 3-node dqlite-rs cluster only, kvread
# (reads of 1000 keys written first) with each worker count (default
# "8 64") in three read modes: leader (every read on the leader),
# follower (linearizable reads spread over the 3 nodes) and stale:100;
# the table gives ops/s and the ratio to leader-only reads.
# Environment: CARGO_TARGET_DIR (default /work/target-bench when /work
# exists, else target), DQLITE_RS_BIN (use this binary, build nothing),
# DQLITE_RS_NODE_ARGS (extra `dqlite-rs node` flags, e.g. --disk-mode),
# BENCH_PORT_BASE (default 31000), TMPDIR.
#
# Output: the machine, the command, one JSON line per run (also appended to
# --results FILE if given; dqlite-rs lines carry the leader's log entries
# per fsync, from its /metrics) and a Markdown table with ops/s, p50/p99
# latency and the ratios dqlite-rs / C dqlite per case.

set -euo pipefail

DURATION=10
WORKERS_LIST=""
WORKLOAD=""
BUILD=1
RESULTS_FILE=""
NODES_LIST="1 3"
PREFILL_MIB=0
FOLLOWER_READS=0
COMMAND_LINE="scripts/bench.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --workers) WORKERS_LIST="$2"; shift 2 ;;
        --workload) WORKLOAD="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --results) RESULTS_FILE="$2"; shift 2 ;;
        --nodes) NODES_LIST="$2"; shift 2 ;;
        --prefill-mib) PREFILL_MIB="$2"; shift 2 ;;
        --follower-reads) FOLLOWER_READS=1; shift ;;
        -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

# The cases, WORKLOAD:WORKERS. By default kvwrite with 1, 8 and 64 workers
# and kvreadwrite with 8; --workload and --workers narrow it.
if [ -z "$WORKLOAD$WORKERS_LIST" ]; then
    PLAN="kvwrite:1 kvwrite:8 kvwrite:64 kvreadwrite:8"
else
    PLAN=""
    for w in ${WORKERS_LIST:-1 8}; do PLAN="$PLAN ${WORKLOAD:-kvwrite}:$w"; done
fi

if [ "$FOLLOWER_READS" = 1 ]; then
    PLAN=""
    for w in ${WORKERS_LIST:-8 64}; do PLAN="$PLAN kvread:$w"; done
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    if [ -d /work ]; then CARGO_TARGET_DIR=/work/target-bench; else CARGO_TARGET_DIR="$ROOT/target"; fi
fi
export CARGO_TARGET_DIR
BIN="${DQLITE_RS_BIN:-$CARGO_TARGET_DIR/release/dqlite-rs}"
[ -n "${DQLITE_RS_BIN:-}" ] && BUILD=0
read -r -a RS_NODE_ARGS <<<"${DQLITE_RS_NODE_ARGS:-}"
PORT=${BENCH_PORT_BASE:-31000}
PORT_LIMIT=$((PORT + 2000))

log() { echo "bench.sh: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in dqlite-demo dqlite jq timeout curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y go-dqlite jq coreutils curl)"
done

if [ "$BUILD" = 1 ]; then
    log "building: cargo build --release -p dqlite-rs (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p dqlite-rs) >&2
fi
[ -x "$BIN" ] || die "$BIN not found; build it with cargo build --release -p dqlite-rs"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dqlite-bench.XXXXXX")"
PIDS=()

stop_pids() {
    # TERM everything, wait up to 10 s, then KILL what is left (a C dqlite
    # node without quorum ignores SIGTERM).
    local pid
    [ ${#PIDS[@]} -eq 0 ] && return 0
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    stop_pids
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null &&
        ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}

# next_port: set NEXT to the next free loopback port at or after $PORT
# (not in a subshell: PORT must advance).
next_port() {
    while [ "$PORT" -lt "$PORT_LIMIT" ]; do
        NEXT=$PORT
        PORT=$((PORT + 1))
        if port_free "$NEXT"; then return 0; fi
    done
    die "no free port below $PORT_LIMIT"
}

# wait_voters ADDRS N LABEL: poll `.cluster` through Debian's dqlite shell
# until N voters are listed (60 s at most).
wait_voters() {
    local addrs=$1 want=$2 label=$3 deadline=$((SECONDS + 60)) got=0
    while [ $SECONDS -lt $deadline ]; do
        got=$(timeout 5 dqlite -s "$addrs" benchmark .cluster 2>/dev/null | grep -c '|voter$' || true)
        [ "$got" -ge "$want" ] && return 0
        sleep 0.5
    done
    log "$label: $got of $want voters after 60 s"
    return 1
}

start_c_dqlite() { # N: start N dqlite-demo nodes, set ADDRS
    local n=$1 i first="" dbp apip
    ADDRS=""
    for i in $(seq 1 "$n"); do
        next_port; dbp=$NEXT; next_port; apip=$NEXT
        local args=(--api "127.0.0.1:$apip" --db "127.0.0.1:$dbp" --dir "$WORK/c$n-$i")
        [ -n "$first" ] && args+=(--join "$first")
        mkdir -p "$WORK/c$n-$i"
        dqlite-demo "${args[@]}" >"$WORK/c$n-$i.log" 2>&1 &
        PIDS+=($!)
        [ -z "$first" ] && first="127.0.0.1:$dbp"
        ADDRS="${ADDRS:+$ADDRS,}127.0.0.1:$dbp"
        # Let the first node come up before others join it.
        [ "$i" = 1 ] && sleep 1
    done
    wait_voters "$ADDRS" "$n" "C dqlite $n-node"
}

start_dqlite_rs() { # N: start N dqlite-rs nodes, set ADDRS
    local n=$1 i first="" p
    ADDRS=""
    for i in $(seq 1 "$n"); do
        next_port; p=$NEXT
        # The first node bootstraps (id 1); the others join through it and
        # get their ids from the cluster.
        local args=(node --address "127.0.0.1:$p" --dir "$WORK/rs$n-$i" ${RS_NODE_ARGS[@]+"${RS_NODE_ARGS[@]}"})
        if [ -n "$first" ]; then args+=(--join "$first"); else args+=(--id 1); fi
        "$BIN" "${args[@]}" >"$WORK/rs$n-$i.log" 2>&1 &
        PIDS+=($!)
        [ -z "$first" ] && first="127.0.0.1:$p"
        ADDRS="${ADDRS:+$ADDRS,}127.0.0.1:$p"
        [ "$i" = 1 ] && sleep 0.5
    done
    wait_voters "$ADDRS" "$n" "dqlite-rs $n-node"
}

# quiet_disk: deletes the data of the cluster just stopped and waits for
# the disk to write back what is still dirty, so the next cluster's
# fsyncs do not queue behind the last one's page cache (a C dqlite run
# leaves hundreds of MB of WAL and snapshots behind).
quiet_disk() {
    rm -rf "$WORK"/c[0-9]*-[0-9]*/ "$WORK"/rs[0-9]*-[0-9]*/
    sync
}

JSONL="$WORK/results.jsonl"
: >"$JSONL"

# leader_fsyncs: "SUM COUNT" of the entries-per-fsync histogram of the
# dqlite-rs leader among $ADDRS (its /metrics), or "0 0".
leader_fsyncs() {
    local a m
    for a in ${ADDRS//,/ }; do
        m=$(curl -s --max-time 5 "http://$a/metrics" 2>/dev/null) || continue
        if grep -q '^dqlite_raft_leader 1' <<<"$m"; then
            awk '/^dqlite_raft_entries_per_fsync_sum/ {s=$2} /^dqlite_raft_entries_per_fsync_count/ {c=$2} END {print s+0, c+0}' <<<"$m"
            return
        fi
    done
    echo "0 0"
}

# prefill DATABASE: grow DATABASE by $PREFILL_MIB MiB (16 MiB per
# transaction, through Debian's dqlite shell, the same for both).
prefill() {
    local db=$1 i rows=16384 sql
    [ "$PREFILL_MIB" -gt 0 ] || return 0
    sql="CREATE TABLE IF NOT EXISTS prefill (v BLOB)"
    timeout 60 dqlite -s "$ADDRS" "$db" "$sql" >/dev/null || return 1
    sql="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $rows) INSERT INTO prefill SELECT randomblob(1024) FROM c"
    for i in $(seq 1 $(((PREFILL_MIB + 15) / 16))); do
        timeout 120 dqlite -s "$ADDRS" "$db" "$sql" >/dev/null || return 1
        log "prefill $db: $((i * 16)) of $PREFILL_MIB MiB"
    done
}

# run_case IMPL NODES: benchmark the running cluster at $ADDRS with each
# worker count; one JSON line per run, tagged with impl and nodes (and, for
# dqlite-rs, the leader's log entries per fsync during the run).
run_case() {
    local impl=$1 nodes=$2 case workload w line before after
    for case in $PLAN; do
        workload=${case%%:*} w=${case##*:}
        log "$impl, $nodes node(s), $workload, $w worker(s), $DURATION s"
        if ! prefill "bench_${workload}_w$w"; then
            log "$impl $nodes-node: prefill failed"
            continue
        fi
        before=$([ "$impl" = dqlite-rs ] && leader_fsyncs || echo "0 0")
        if line=$(timeout $((DURATION + 120)) "$BIN" bench -s "$ADDRS" --workload "$workload" \
            --workers "$w" --duration "$DURATION" --database "bench_${workload}_w$w" --json \
            2> >(sed 's/^/    /' >&2)); then
            after=$([ "$impl" = dqlite-rs ] && leader_fsyncs || echo "0 0")
            echo "$line" | jq -c --arg impl "$impl" --argjson nodes "$nodes" \
                --arg before "$before" --arg after "$after" '
                ($before | split(" ") | map(tonumber)) as $b
                | ($after | split(" ") | map(tonumber)) as $a
                | {impl: $impl, nodes: $nodes} + .
                + (if ($a[1] - $b[1]) > 0
                   then {leader_entries_per_fsync: ((($a[0] - $b[0]) / ($a[1] - $b[1])) * 10 | round / 10)}
                   else {} end)' | tee -a "$JSONL"
        else
            log "$impl $nodes-node $w workers: bench failed: $line"
        fi
    done
}

NOTES=()
MACHINE="nproc $(nproc), kernel $(uname -r), CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "machine: $MACHINE"
echo "filesystem of the data directories: $(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}')"
echo "C dqlite: go-dqlite $(dpkg-query -W -f='${Version}' go-dqlite 2>/dev/null || echo '?'), libdqlite0 $(dpkg-query -W -f='${Version}' libdqlite0 2>/dev/null || echo '?')"
if [ -n "${DQLITE_RS_BIN:-}" ]; then
    echo "dqlite-rs: $BIN ($("$BIN" --version 2>/dev/null || echo '?'))${RS_NODE_ARGS[*]:+, node flags: ${RS_NODE_ARGS[*]}}"
else
    echo "dqlite-rs: built from $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')${RS_NODE_ARGS[*]:+, node flags: ${RS_NODE_ARGS[*]}}"
fi
echo "command: $COMMAND_LINE (cases$PLAN, ${DURATION} s each, keys 32 B, values 1024 B$([ "$PREFILL_MIB" -gt 0 ] && echo ", databases prefilled with $PREFILL_MIB MiB"))"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

HAS_JOIN=0
"$BIN" node --help 2>/dev/null | grep -q -- '--join' && HAS_JOIN=1

if [ "$FOLLOWER_READS" = 1 ]; then
    start_dqlite_rs 3 || die "dqlite-rs 3-node cluster did not form (logs: $(tail -n 3 "$WORK/rs3-1.log" | tr '\n' ' '))"
    for w in ${WORKERS_LIST:-8 64}; do
        for mode in leader follower stale:100; do
            log "dqlite-rs, 3 nodes, kvread, read mode $mode, $w worker(s), $DURATION s"
            if line=$(timeout $((DURATION + 120)) "$BIN" bench -s "$ADDRS" --workload kvread \
                --read-mode "$mode" --workers "$w" --duration "$DURATION" \
                --database "bench_kvread_w$w" --json 2> >(sed 's/^/    /' >&2)); then
                echo "$line" | jq -c '{impl: "dqlite-rs", nodes: 3} + .' | tee -a "$JSONL"
            else
                log "kvread $mode $w workers: bench failed: $line"
            fi
        done
    done
    stop_pids
    [ -n "$RESULTS_FILE" ] && cat "$JSONL" >>"$RESULTS_FILE"
    echo
    echo "| workers | read mode | ops/s | p50 ms | p99 ms | ops/s vs leader | errors |"
    echo "|---|---|---|---|---|---|---|"
    jq -rs '
        def ratio(a; b): if a == null or b == null or b == 0 then "–"
            else ((a / b * 100 | round) / 100 | tostring) end;
        . as $all
        | .[]
        | . as $r
        | ($all | map(select(.workers == $r.workers and .read_mode == "leader")) | first) as $l
        | "| \(.workers) | \(.read_mode) | \(.ops_per_sec) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(ratio(.ops_per_sec; $l.ops_per_sec)) | \(.errors) |"
    ' "$JSONL"
    exit 0
fi

for nodes in $NODES_LIST; do
    if start_c_dqlite "$nodes"; then
        run_case c-dqlite "$nodes"
    else
        NOTES+=("C dqlite $nodes-node cluster did not form; skipped")
    fi
    stop_pids
    quiet_disk

    if [ "$nodes" = 3 ] && [ "$HAS_JOIN" = 0 ]; then
        NOTES+=("dqlite-rs 3-node: skipped, this dqlite-rs node has no --join yet (1-node dqlite-rs only)")
        continue
    fi
    if start_dqlite_rs "$nodes"; then
        run_case dqlite-rs "$nodes"
    else
        NOTES+=("dqlite-rs $nodes-node cluster did not form; skipped (logs: $(tail -n 3 "$WORK/rs$nodes-1.log" | tr '\n' ' '))")
    fi
    stop_pids
    quiet_disk
done

if [ -n "$RESULTS_FILE" ]; then
    cat "$JSONL" >>"$RESULTS_FILE"
fi

echo
echo "| nodes | workload | workers | C dqlite ops/s | C p50 ms | C p99 ms | dqlite-rs ops/s | rs p50 ms | rs p99 ms | ops/s rs/C | p50 rs/C | p99 rs/C |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
jq -rs --arg plan "$PLAN" --arg nodes "$NODES_LIST" '
    def cell(x): if x == null then "–" else (x | tostring) end;
    def ratio(a; b): if a == null or b == null or b == 0 then "–"
        else ((a / b * 100 | round) / 100 | tostring) end;
    . as $all
    | ($nodes | split(" ") | map(select(. != "") | tonumber))[] as $n
    | ($plan | split(" ") | map(select(. != "") | split(":")))[] as [$wl, $ws]
    | ($ws | tonumber) as $w
    | ($all | map(select(.impl == "c-dqlite" and .nodes == $n and .workload == $wl and .workers == $w)) | first) as $c
    | ($all | map(select(.impl == "dqlite-rs" and .nodes == $n and .workload == $wl and .workers == $w)) | first) as $r
    | "| \($n) | \($wl) | \($w) | \(cell($c.ops_per_sec)) | \(cell($c.latency_ms.p50)) | \(cell($c.latency_ms.p99)) | \(cell($r.ops_per_sec)) | \(cell($r.latency_ms.p50)) | \(cell($r.latency_ms.p99)) | \(ratio($r.ops_per_sec; $c.ops_per_sec)) | \(ratio($r.latency_ms.p50; $c.latency_ms.p50)) | \(ratio($r.latency_ms.p99; $c.latency_ms.p99)) |"
' "$JSONL"
echo
jq -rs '.[] | "\(.impl) \(.nodes)-node \(.workload) \(.workers)w: max latency \(.latency_ms.max) ms, busy retries \(.busy_retries), reconnects \(.reconnects), errors \(.errors), unfinished \(.unfinished)\(if .leader_entries_per_fsync then ", leader entries per fsync \(.leader_entries_per_fsync)" else "" end)\(if .first_error then ", first error: " + .first_error else "" end)"' "$JSONL"
for note in "${NOTES[@]}"; do echo "note: $note"; done
