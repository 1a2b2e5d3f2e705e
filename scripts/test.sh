#!/usr/bin/env bash
# The one test command for dqlite-rs (named in the README; .ci/run calls it).
#
#   scripts/test.sh
#
# On a Debian bookworm machine with a Rust toolchain it installs what the tests
# need (apt, only if missing), then runs, in order, failing at the first
# failing step:
#   1. cargo fmt --check
#   2. cargo clippy on every target, warnings are errors
#   3. the workspace tests (nextest if installed, else cargo test), which
#      include the compatibility tests against Debian's real `dqlite` shell
#   4. the deterministic simulator over $SIM_SEEDS seeds of the consensus
#      node, then $SIM_STORE_SEEDS seeds of the replicated SQLite store (if
#      crates/sim has the dqlite-sim binary)
#   5. every cargo-fuzz target in fuzz/ for $FUZZ_SECONDS seconds each (if
#      fuzz/ exists)
#
# Knobs (environment):
#   SIM_SEEDS=500      seeds for the simulator (consensus node)
#   SIM_STORE_SEEDS=2000  seeds for the simulator over the SQLite store
#                      (40-90 s on 2 cores)
#   FUZZ_SECONDS=40    libFuzzer -max_total_time per fuzz target
#   SKIP_FUZZ=1        skip the fuzz step (it says so at the end)
#   CARGO_TARGET_DIR   honoured as usual
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

SIM_SEEDS=${SIM_SEEDS:-500}
SIM_STORE_SEEDS=${SIM_STORE_SEEDS:-2000}
FUZZ_SECONDS=${FUZZ_SECONDS:-40}
SKIP_FUZZ=${SKIP_FUZZ:-0}
# Safety nets only: every test bounds its own waits. A step that runs into
# one of these fails the run.
TEST_STEP_TIMEOUT=${TEST_STEP_TIMEOUT:-1200}
SIM_STEP_TIMEOUT=${SIM_STEP_TIMEOUT:-900}

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export DEBIAN_FRONTEND=noninteractive

START=$SECONDS
CURRENT_STEP="setup"
NOTES=()

log() { printf '==> %s\n' "$*"; }
note() {
    NOTES+=("$*")
    printf '==> NOTE: %s\n' "$*"
}
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\n==> FAILED in step "%s" (exit %s) after %ss\n' \
            "$CURRENT_STEP" "$rc" "$((SECONDS - START))" >&2
    fi
}
trap on_exit EXIT

# step NAME COMMAND...: run COMMAND, timing it.
step() {
    CURRENT_STEP=$1
    shift
    local t0=$SECONDS
    printf '\n==> [%s] %s\n' "$CURRENT_STEP" "$*"
    "$@"
    printf '==> [%s] ok (%ss)\n' "$CURRENT_STEP" "$((SECONDS - t0))"
}

# ---------------------------------------------------------------------------
# Prerequisites (apt, only what is missing)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    log "installing with apt: $*"
    # A fresh machine may have no package lists yet: update once and retry.
    if ! as_root apt-get install -y -q "$@" </dev/null; then
        if [ "$APT_UPDATED" -eq 0 ]; then
            APT_UPDATED=1
            as_root apt-get update -q </dev/null
            as_root apt-get install -y -q "$@" </dev/null
        else
            return 1
        fi
    fi
}

prerequisites() {
    local missing=()
    # Debian's go-dqlite: the real `dqlite` shell (compatibility tests) and
    # dqlite-demo (C dqlite nodes for benchmarks).
    [ -x /usr/bin/dqlite ] && [ -x /usr/bin/dqlite-demo ] || missing+=(go-dqlite)
    # A C compiler for rusqlite's bundled SQLite; C++ for libfuzzer-sys.
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    if [ -f fuzz/Cargo.toml ] && ! command -v c++ >/dev/null 2>&1; then
        missing+=(g++)
    fi
    command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
    # Go and go-dqlite's sources: crates/cli/tests/roles.rs builds a small
    # program against go-dqlite's real client (Client.Add/Assign), offline.
    command -v go >/dev/null 2>&1 || missing+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/canonical/go-dqlite/client ] ||
        missing+=(golang-github-canonical-go-dqlite-dev)
    # crates/capi's tests: nm/readelf on libdqlite.so, and cgo builds of
    # Go programs against go-dqlite's bindings (dqlite.h, -lraft, -lsqlite3).
    command -v nm >/dev/null 2>&1 && command -v readelf >/dev/null 2>&1 || missing+=(binutils)
    [ -f /usr/include/dqlite.h ] || missing+=(libdqlite-dev)
    [ -f /usr/include/raft.h ] || missing+=(libraft-dev)
    # A terminal for the shell's interactive test (crates/cli/tests/shell_tty.rs).
    command -v tmux >/dev/null 2>&1 || missing+=(tmux)
    # The TLS tests make the cluster certificate with the README's command.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    if [ ! -x /usr/bin/dqlite ]; then
        echo "Debian's dqlite shell is still missing after installing go-dqlite" >&2
        return 1
    fi
    log "go-dqlite $(dpkg-query -W -f='${Version}' go-dqlite 2>/dev/null || echo '?'):" \
        "/usr/bin/dqlite present"
    log "$(cargo --version); $(rustc --version)"
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        log "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
    fi
}

# ---------------------------------------------------------------------------
# Steps

run_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        timeout --kill-after=30 "$TEST_STEP_TIMEOUT" \
            cargo nextest run --workspace --no-fail-fast
        # nextest does not run doctests.
        timeout --kill-after=30 "$TEST_STEP_TIMEOUT" \
            cargo test --workspace --doc --no-fail-fast
    else
        note "cargo-nextest not installed; using cargo test"
        timeout --kill-after=30 "$TEST_STEP_TIMEOUT" \
            cargo test --workspace --no-fail-fast
        timeout --kill-after=30 "$TEST_STEP_TIMEOUT" \
            cargo test --workspace --doc --no-fail-fast
    fi
}

has_sim_binary() {
    [ -f crates/sim/Cargo.toml ] || return 1
    cargo metadata --no-deps --format-version 1 2>/dev/null |
        tr -d ' \n' |
        grep -q '"kind":\["bin"\],"crate_types":\["bin"\],"name":"dqlite-sim"'
}

run_sim() {
    timeout --kill-after=30 "$SIM_STEP_TIMEOUT" \
        cargo run --release -p dqlite-sim --bin dqlite-sim -- --seeds "$SIM_SEEDS"
    timeout --kill-after=30 "$SIM_STEP_TIMEOUT" \
        cargo run --release -p dqlite-sim --bin dqlite-sim -- --node store \
        --seeds "$SIM_STORE_SEEDS"
}

ensure_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        return 0
    fi
    log "cargo-fuzz not installed; cargo install cargo-fuzz --locked"
    if ! cargo install cargo-fuzz --locked; then
        return 1
    fi
    cargo fuzz --version >/dev/null 2>&1
}

run_fuzz() {
    if ! ensure_cargo_fuzz; then
        note "cargo-fuzz could not be installed: fuzz targets NOT run"
        return 0
    fi
    local targets
    targets=$(cargo fuzz list)
    if [ -z "$targets" ]; then
        note "fuzz/ has no targets"
        return 0
    fi
    local t
    for t in $targets; do
        printf '\n==> [fuzz] %s for %ss\n' "$t" "$FUZZ_SECONDS"
        # cargo-fuzz builds with -Zsanitizer=address: RUSTC_BOOTSTRAP lets
        # the stable toolchain accept it (docs/compat-notes.md, Fuzzing).
        # A crash, leak or timeout fails the run; the input is saved under
        # fuzz/artifacts/$t/.
        # New inputs go to fuzz/corpus/$t (ignored by git); committed seeds
        # in fuzz/seeds/$t, if any, are read too.
        local corpus=("fuzz/corpus/$t")
        mkdir -p "fuzz/corpus/$t"
        if [ -d "fuzz/seeds/$t" ]; then
            corpus+=("fuzz/seeds/$t")
        fi
        RUSTC_BOOTSTRAP=1 timeout --kill-after=30 "$((FUZZ_SECONDS + 900))" \
            cargo fuzz run "$t" "${corpus[@]}" -- \
            -max_total_time="$FUZZ_SECONDS" -timeout=30 -print_final_stats=1
    done
}

# ---------------------------------------------------------------------------

log "dqlite-rs tests in $ROOT (CI=${CI:-false})"
step prerequisites prerequisites
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step test run_tests

if has_sim_binary; then
    step sim run_sim
else
    note "crates/sim has no dqlite-sim binary yet: simulator not run"
fi

if [ -f fuzz/Cargo.toml ]; then
    if [ "$SKIP_FUZZ" = 1 ]; then
        note "SKIP_FUZZ=1: fuzz targets NOT run"
    else
        step fuzz run_fuzz
    fi
fi

CURRENT_STEP="done"
printf '\n==> all steps passed in %ss\n' "$((SECONDS - START))"
for n in "${NOTES[@]+"${NOTES[@]}"}"; do
    printf '==> NOTE: %s\n' "$n"
done
