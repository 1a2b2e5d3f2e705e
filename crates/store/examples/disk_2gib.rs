//! Memory of a disk-mode store holding a large database (issue 4: "a 2 GiB
//! database in disk mode works while the node's RSS stays far below that").
//!
//! Builds a database of `--mib` MiB (default 2100) through SQLite over
//! `Store::disk`, with a stand-in proposer that applies every entry to the
//! store's own `StoreState` in order and keeps nothing, then reads it all
//! back (aggregate + `PRAGMA integrity_check`), streams a consensus
//! snapshot of it into a byte counter, reopens the store from its
//! directory, reads again, and prints the peak RSS (VmHWM) and wall time.
//!
//! ```text
//! cargo run --release -p dqlite-store --example disk_2gib -- [--mib 2100] [--dir DIR] [--keep]
//! ```
//!
//! Not a test: it writes and reads a few GiB (minutes). The directory is a
//! fresh temporary one under `--dir` (default: the system temp dir) and is
//! removed at the end unless `--keep` is given.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dqlite_consensus::State;
use dqlite_store::{OnFailure, Proposer, Store, StoreState};
use rusqlite::Connection;

const MIB: u64 = 1 << 20;
/// Bytes of blob per row and rows per transaction: 2 MiB transactions.
const ROW_BYTES: u64 = 16 * 1024;
const ROWS_PER_TX: u64 = 128;

/// Stands in for consensus: numbers entries and applies each to the
/// store's own state, in order. Unlike a real log it keeps nothing, so the
/// process's memory is the store's alone.
struct Applier {
    state: Mutex<(u64, StoreState)>,
}

impl Proposer for Applier {
    fn propose(&self, entry: Vec<u8>, _failed: OnFailure) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (index, state) = &mut *guard;
        *index += 1;
        if let Err(e) = state.apply(*index, &entry) {
            eprintln!("cannot apply entry {index}: {e}");
        }
    }
}

impl Applier {
    fn last_index(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// A field of /proc/self/status in KiB (VmRSS, VmHWM).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mem() -> String {
    format!(
        "rss {} MiB, peak {} MiB",
        status_kib("VmRSS:") / 1024,
        status_kib("VmHWM:") / 1024
    )
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Reads everything: an aggregate over every row (each blob's last byte,
/// so overflow chains are walked) and SQLite's integrity check.
fn verify(conn: &Connection, label: &str, start: Instant) -> rusqlite::Result<(i64, i64)> {
    let t = Instant::now();
    let (rows, bytes, _last): (i64, i64, i64) = conn.query_row(
        "SELECT count(*), sum(length(v)), count(substr(v, -1)) FROM t",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    println!(
        "[{:7.1}s] {label}: {rows} rows, {} MiB of blobs (aggregate {:.1}s) — {}",
        start.elapsed().as_secs_f64(),
        bytes as u64 / MIB,
        t.elapsed().as_secs_f64(),
        mem()
    );
    let t = Instant::now();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    println!(
        "[{:7.1}s] {label}: integrity_check = {check} ({:.1}s) — {}",
        start.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64(),
        mem()
    );
    assert_eq!(check, "ok", "integrity check failed");
    Ok((rows, bytes))
}

/// Counts the bytes of a snapshot stream.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut target_mib: u64 = 2100;
    let mut parent = std::env::temp_dir();
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mib" => target_mib = args.next().ok_or("--mib N")?.parse()?,
            "--dir" => parent = PathBuf::from(args.next().ok_or("--dir DIR")?),
            "--keep" => keep = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("disk-2gib-")
        .tempdir_in(&parent)?;
    let dir = tmp.path().to_path_buf();
    let start = Instant::now();
    println!(
        "store dir {}; target {target_mib} MiB in {} KiB transactions of {} rows × {} KiB",
        dir.display(),
        ROWS_PER_TX * ROW_BYTES / 1024,
        ROWS_PER_TX,
        ROW_BYTES / 1024
    );

    let store = Store::disk(&dir)?;
    let applier = Arc::new(Applier {
        state: Mutex::new((store.state().applied_index(), store.state())),
    });
    store.set_proposer(applier.clone());
    let conn = store.open("big.db")?;
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB);
         CREATE INDEX t_k ON t (k);",
    )?;
    let insert = format!(
        "INSERT INTO t (k, v) SELECT random(), randomblob({ROW_BYTES}) \
         FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS_PER_TX}) SELECT x FROM c)"
    );
    let target = target_mib * MIB;
    let tx_bytes = ROW_BYTES * ROWS_PER_TX;
    // Bounded: enough transactions for the target plus B-tree overhead.
    let max_txs = target / tx_bytes * 2 + 16;
    let mut next_report = 256 * MIB;
    let mut txs = 0u64;
    let mut size = 0u64;
    let fill = Instant::now();
    while size < target && txs < max_txs {
        conn.execute(&insert, [])?;
        txs += 1;
        size = conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        if size >= next_report {
            println!(
                "[{:7.1}s] {} MiB in {txs} transactions ({:.1} MiB/s), files on disk {} MiB — {}",
                start.elapsed().as_secs_f64(),
                size / MIB,
                size as f64 / MIB as f64 / fill.elapsed().as_secs_f64(),
                dir_bytes(&dir) / MIB,
                mem()
            );
            next_report += 256 * MIB;
        }
    }
    println!(
        "[{:7.1}s] filled: {} MiB database, {txs} transactions, {} entries applied, fill {:.1}s — {}",
        start.elapsed().as_secs_f64(),
        size / MIB,
        applier.last_index(),
        fill.elapsed().as_secs_f64(),
        mem()
    );
    let (rows, bytes) = verify(&conn, "query", start)?;

    // A consensus snapshot of the whole database, streamed page by page.
    let t = Instant::now();
    let mut counter = Counter(0);
    {
        let guard = applier.state.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.freeze()?.write_to(&mut counter)?;
    }
    println!(
        "[{:7.1}s] snapshot stream: {} MiB ({:.1}s) — {}",
        start.elapsed().as_secs_f64(),
        counter.0 / MIB,
        t.elapsed().as_secs_f64(),
        mem()
    );

    // What a node does before it stops: the snapshot above already
    // checkpointed; make sure, then reopen from the files alone.
    let last = applier.last_index();
    assert!(store.checkpoint(last)?, "no reader should pin a version");
    drop(conn);
    drop(applier);
    drop(store);
    let t = Instant::now();
    let reopened = Store::disk(&dir)?;
    let applied = reopened.state().applied_index();
    println!(
        "[{:7.1}s] reopened at index {applied} (last applied {last}) in {:.2}s — {}",
        start.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64(),
        mem()
    );
    assert_eq!(applied, last);
    let conn = reopened
        .open_existing("big.db")?
        .ok_or("big.db is missing after the reopen")?;
    let again = verify(&conn, "after reopen", start)?;
    assert_eq!(again, (rows, bytes), "the reopened database differs");
    drop(conn);
    drop(reopened);

    let files = dir_bytes(&dir);
    println!(
        "RESULT database {} MiB (files {} MiB), {rows} rows, {txs} transactions; peak RSS (VmHWM) {} MiB; wall {:.1}s",
        size / MIB,
        files / MIB,
        status_kib("VmHWM:") / 1024,
        start.elapsed().as_secs_f64()
    );
    if keep {
        println!("kept {}", tmp.keep().display());
    }
    Ok(())
}
