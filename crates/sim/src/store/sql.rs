//! The workloads' SQL: schemas, the two halves of an interactive write,
//! and the reads, as a client of the server would send them.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::checker::linearizability::{Command, Outcome};
use crate::options::{Workload, BANK_ACCOUNTS};

/// What a write's first half read.
pub(super) enum Seen {
    /// The register's value.
    Register(Option<i64>),
    /// The two accounts of a transfer with their balances, and the amount.
    Bank {
        from: (i64, i64),
        to: (i64, i64),
        amount: i64,
    },
    /// Whether the element is there already.
    Set(bool),
}

/// The schema of each workload, created by the first write.
pub(super) fn schema(workload: Workload) -> String {
    match workload {
        Workload::Register => {
            "CREATE TABLE IF NOT EXISTS reg (k INTEGER PRIMARY KEY, v INTEGER NOT NULL);".into()
        }
        Workload::Set => "CREATE TABLE IF NOT EXISTS elems (v INTEGER PRIMARY KEY);".into(),
        Workload::Bank => {
            let mut sql = String::from(
                "CREATE TABLE IF NOT EXISTS acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);",
            );
            for id in 0..BANK_ACCOUNTS {
                sql.push_str(&format!(
                    "INSERT OR IGNORE INTO acct (id, bal) VALUES ({id}, 100);"
                ));
            }
            sql
        }
    }
}

pub(super) fn table(workload: Workload) -> &'static str {
    match workload {
        Workload::Register => "reg",
        Workload::Bank => "acct",
        Workload::Set => "elems",
    }
}

/// Opens a write's transaction and reads what it depends on.
pub(super) fn begin(
    conn: &Connection,
    workload: Workload,
    key: i64,
    command: Command,
) -> rusqlite::Result<Seen> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = ?1",
        [table(workload)],
        |r| r.get(0),
    )?;
    if exists == 0 {
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        tx.execute_batch(&schema(workload))?;
        tx.commit()?;
    }
    conn.execute_batch("BEGIN DEFERRED")?;
    let v = match command {
        Command::Write(v) | Command::Cas { new: v, .. } => v,
        Command::Read => 0,
    };
    Ok(match workload {
        Workload::Register => Seen::Register(
            conn.query_row("SELECT v FROM reg WHERE k = ?1", [key], |r| r.get(0))
                .optional()?,
        ),
        Workload::Set => Seen::Set(
            conn.query_row("SELECT count(*) FROM elems WHERE v = ?1", [v as i64], |r| {
                r.get::<_, i64>(0)
            })? > 0,
        ),
        Workload::Bank => {
            let n = BANK_ACCOUNTS;
            let from = (v % n) as i64;
            let to = ((v % n + 1 + (v / n) % (n - 1)) % n) as i64;
            let balance = |id: i64| {
                conn.query_row("SELECT bal FROM acct WHERE id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })
            };
            Seen::Bank {
                from: (from, balance(from)?),
                to: (to, balance(to)?),
                amount: (1 + v % 30) as i64,
            }
        }
    })
}

/// Closes a write's transaction: writes what the client computed from its
/// read, and commits.
pub(super) fn finish(
    conn: &Connection,
    key: i64,
    command: Command,
    seen: &Seen,
) -> rusqlite::Result<Outcome> {
    let upsert = |v: u64| {
        conn.execute(
            "INSERT INTO reg (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            params![key, v as i64],
        )
    };
    let outcome = match (seen, command) {
        (Seen::Register(_), Command::Write(v)) => {
            upsert(v)?;
            Outcome::Written
        }
        (Seen::Register(seen), Command::Cas { expected, new }) => {
            let swaps = seen.map(|v| v as u64) == expected;
            if swaps {
                upsert(new)?;
            }
            Outcome::Cas(swaps)
        }
        (Seen::Set(present), Command::Write(v)) => {
            if !present {
                conn.execute("INSERT INTO elems (v) VALUES (?1)", [v as i64])?;
            }
            Outcome::Written
        }
        (&Seen::Bank { from, to, amount }, _) => {
            if from.1 >= amount {
                conn.execute(
                    "UPDATE acct SET bal = ?2 WHERE id = ?1",
                    [from.0, from.1 - amount],
                )?;
                conn.execute(
                    "UPDATE acct SET bal = ?2 WHERE id = ?1",
                    [to.0, to.1 + amount],
                )?;
            }
            Outcome::Written
        }
        _ => Outcome::Unknown,
    };
    conn.execute_batch("COMMIT")?;
    Ok(outcome)
}

/// `acct(id, bal)`: a read sums every balance in one statement.
pub(super) fn bank_read(conn: &Connection) -> rusqlite::Result<Outcome> {
    let read = conn.query_row(
        "SELECT count(*), coalesce(sum(bal), 0), coalesce(min(bal), 0) FROM acct",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    );
    match read {
        Ok((count, sum, min)) => Ok(Outcome::Read(Some(
            if count as u64 == BANK_ACCOUNTS && min >= 0 {
                sum as u64
            } else {
                u64::MAX
            },
        ))),
        Err(e) if is_missing_table(&e) => Ok(Outcome::Read(None)),
        Err(e) => Err(e),
    }
}

/// One register per row: `reg(k, v)`.
pub(super) fn register_read(conn: &Connection, key: u64) -> rusqlite::Result<Outcome> {
    let read = conn
        .query_row("SELECT v FROM reg WHERE k = ?1", [key as i64], |r| {
            r.get::<_, i64>(0)
        })
        .optional();
    match read {
        Ok(v) => Ok(Outcome::Read(v.map(|v| v as u64))),
        Err(e) if is_missing_table(&e) => Ok(Outcome::Read(None)),
        Err(e) => Err(e),
    }
}

/// `elems(v)`: a read counts the elements.
pub(super) fn set_read(conn: &Connection) -> rusqlite::Result<Outcome> {
    match conn.query_row("SELECT count(*) FROM elems", [], |r| r.get::<_, i64>(0)) {
        Ok(n) => Ok(Outcome::Read(Some(n as u64))),
        Err(e) if is_missing_table(&e) => Ok(Outcome::Read(None)),
        Err(e) => Err(e),
    }
}

pub(super) fn is_missing_table(e: &rusqlite::Error) -> bool {
    e.to_string().contains("no such table")
}

/// A read as one statement.
pub(super) fn read(conn: &Connection, workload: Workload, key: u64) -> rusqlite::Result<Outcome> {
    match workload {
        Workload::Register => register_read(conn, key),
        Workload::Bank => bank_read(conn),
        Workload::Set => set_read(conn),
    }
}

/// The final read of a set or bank run: every value, in order.
pub(super) fn final_read(conn: &Connection, workload: Workload) -> rusqlite::Result<Vec<u64>> {
    let sql = match workload {
        Workload::Register => return Ok(Vec::new()),
        Workload::Bank => "SELECT bal FROM acct ORDER BY id",
        Workload::Set => "SELECT v FROM elems ORDER BY v",
    };
    let read = conn.prepare(sql).and_then(|mut s| {
        s.query_map([], |r| r.get::<_, i64>(0))?
            .map(|v| v.map(|v| v as u64))
            .collect::<rusqlite::Result<Vec<u64>>>()
    });
    match read {
        Err(e) if is_missing_table(&e) => Ok(Vec::new()),
        other => other,
    }
}
