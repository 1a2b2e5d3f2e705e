//! Fills and checks a large database on a running node through the Rust
//! client, sending little data: every transaction is one
//! `INSERT ... SELECT randomblob(..) FROM (WITH RECURSIVE ...)` executed by
//! the node. Used by `scripts/disk-mode-2gib.sh`.
//!
//! ```text
//! cargo run --release -p dqlite-node --example disk_fill -- fill  127.0.0.1:9001 --mib 2100
//! cargo run --release -p dqlite-node --example disk_fill -- check 127.0.0.1:9001
//! ```
//!
//! `fill` stops at `--mib` MiB (database size as SQLite reports it) or
//! after a bounded number of transactions; `check` runs an aggregate over
//! every row and `PRAGMA integrity_check`, and fails unless it is "ok".

use std::time::{Duration, Instant};

use dqlite_client::{Config, Database};

const MIB: u64 = 1 << 20;

async fn size(db: &mut Database) -> Result<u64, Box<dyn std::error::Error>> {
    let rows = db
        .query(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            (),
        )
        .await?
        .all()
        .await?;
    Ok(rows[0].get::<i64>(0)? as u64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: disk_fill fill|check ADDRESS [--mib N] [--rows N] [--row-kib N] [--db NAME]";
    let mode = args.next().ok_or(usage)?;
    let address = args.next().ok_or(usage)?;
    let mut target_mib: u64 = 2100;
    let mut rows_per_tx: u64 = 64;
    let mut row_kib: u64 = 16;
    let mut name = "big".to_string();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(usage);
        match arg.as_str() {
            "--mib" => target_mib = value()?.parse()?,
            "--rows" => rows_per_tx = value()?.parse()?,
            "--row-kib" => row_kib = value()?.parse()?,
            "--db" => name = value()?,
            _ => return Err(usage.into()),
        }
    }
    let mut config = Config::default();
    // integrity_check over GiBs takes a while before its first row.
    config.request_timeout = Duration::from_secs(600);
    let mut db = Database::connect_with(&[address.as_str()], &name, &config).await?;
    let start = Instant::now();
    match mode.as_str() {
        "fill" => {
            db.exec(
                "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB)",
                (),
            )
            .await?;
            db.exec("CREATE INDEX IF NOT EXISTS t_k ON t (k)", ())
                .await?;
            let insert = format!(
                "INSERT INTO t (k, v) SELECT random(), randomblob({}) FROM \
                 (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows_per_tx}) SELECT x FROM c)",
                row_kib * 1024
            );
            let target = target_mib * MIB;
            let tx_bytes = (rows_per_tx * row_kib * 1024).max(1);
            // Bounded: twice the transactions the target needs.
            let max_txs = target / tx_bytes * 2 + 16;
            let mut txs = 0u64;
            let mut bytes = size(&mut db).await?;
            let mut next_report = (bytes / (256 * MIB) + 1) * 256 * MIB;
            let mut slowest = Duration::ZERO;
            while bytes < target && txs < max_txs {
                let t = Instant::now();
                db.exec(&insert, ()).await?;
                slowest = slowest.max(t.elapsed());
                txs += 1;
                if txs.is_multiple_of(16) || bytes + 16 * tx_bytes >= target {
                    bytes = size(&mut db).await?;
                }
                if bytes >= next_report {
                    println!(
                        "fill: {} MiB after {txs} transactions, {:.1}s ({:.1} MiB/s), slowest commit {:.2}s",
                        bytes / MIB,
                        start.elapsed().as_secs_f64(),
                        (txs * tx_bytes) as f64 / MIB as f64 / start.elapsed().as_secs_f64(),
                        slowest.as_secs_f64()
                    );
                    next_report += 256 * MIB;
                }
            }
            bytes = size(&mut db).await?;
            println!(
                "fill: done, database {} MiB, {txs} transactions of {} KiB, {:.1}s, slowest commit {:.2}s",
                bytes / MIB,
                tx_bytes / 1024,
                start.elapsed().as_secs_f64(),
                slowest.as_secs_f64()
            );
        }
        "check" => {
            let bytes = size(&mut db).await?;
            let rows = db
                .query(
                    "SELECT count(*), sum(length(v)), count(substr(v, -1)) FROM t",
                    (),
                )
                .await?
                .all()
                .await?;
            let (count, blob) = (rows[0].get::<i64>(0)?, rows[0].get::<i64>(1)?);
            println!(
                "check: database {} MiB, {count} rows, {} MiB of blobs ({:.1}s)",
                bytes / MIB,
                blob as u64 / MIB,
                start.elapsed().as_secs_f64()
            );
            let t = Instant::now();
            let rows = db.query("PRAGMA integrity_check", ()).await?.all().await?;
            let result: String = rows[0].get(0)?;
            println!(
                "check: integrity_check = {result} ({:.1}s)",
                t.elapsed().as_secs_f64()
            );
            if result != "ok" {
                return Err(format!("integrity_check: {result}").into());
            }
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
