//! `dqlite-rs backup` and `dqlite-rs restore`: a live database to a plain
//! SQLite file and back, over the wire protocol, so they work against any
//! dqlite-protocol cluster.
//!
//! Backup asks the leader for a DUMP: the image of the database as of one
//! committed index, so the file is consistent however many writes go on.
//! Restore reads a SQLite file locally and replays its schema and rows
//! through the leader into a new database, in transactions of bounded
//! size: the cluster replicates it like any other writes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use dqlite_client::{Client, Config, Database, Value};
use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

/// `backup` arguments.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Cluster members to contact (comma-separated); the leader is found
    /// through them.
    #[arg(short = 's', long = "servers", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,
    /// The database to back up.
    pub database: String,
    /// The SQLite file to write (refused if it exists, unless --force).
    pub file: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `restore` arguments.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Cluster members to contact (comma-separated); the leader is found
    /// through them.
    #[arg(short = 's', long = "servers", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,
    /// The database to create; it must not hold any schema yet.
    pub database: String,
    /// The SQLite file to load.
    pub file: PathBuf,
}

/// Bytes of row values per INSERT statement and per transaction: each
/// transaction is one raft entry, which stays far below message limits.
const STATEMENT_BYTES: usize = 1 << 20;
const TRANSACTION_BYTES: usize = 8 << 20;
/// Rows per INSERT statement, whatever their size.
const STATEMENT_ROWS: usize = 500;
/// Chunks in which the image is written, so the progress bar moves.
const WRITE_CHUNK: usize = 1 << 20;

fn config() -> Config {
    let mut config = Config::default();
    // A DUMP carries the whole image in one message.
    config.max_message_size = 16 << 30;
    config.request_timeout = Duration::from_secs(600);
    config
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn leader(servers: &[String]) -> anyhow::Result<Client> {
    Client::find_leader(servers, &config())
        .await
        .with_context(|| format!("no leader found through {}", servers.join(",")))
}

fn bytes_bar(len: u64, message: String) -> ProgressBar {
    // Drawn on stderr when it is a terminal; hidden otherwise.
    let bar = ProgressBar::new(len).with_message(message);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `dqlite-rs backup`.
pub fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    if args.file.exists() && !args.force {
        bail!(
            "{} exists; choose another file or pass --force",
            args.file.display()
        );
    }
    let files = runtime()?.block_on(async {
        let mut client = leader(&args.servers).await?;
        let spinner = ProgressBar::new_spinner().with_message(format!(
            "dumping {} from {}",
            args.database,
            client.address()
        ));
        spinner.enable_steady_tick(Duration::from_millis(100));
        let files = client.dump(&args.database).await;
        spinner.finish_and_clear();
        files.with_context(|| format!("cannot dump database {}", args.database))
    })?;
    let Some(main) = files.first() else {
        bail!("the server sent no database image");
    };
    let wal = files.get(1).map(|f| f.data.as_slice()).unwrap_or_default();
    let partial = sibling(&args.file, ".partial");
    let partial_wal = sibling(&partial, "-wal");
    let result = write_backup(&partial, &partial_wal, &main.data, wal);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&partial_wal);
    }
    let tables = result?;
    std::fs::rename(&partial, &args.file).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            args.file.display()
        )
    })?;
    sync_dir(&args.file)?;
    let size = std::fs::metadata(&args.file).map_or(0, |m| m.len());
    println!(
        "backed up {} ({size} bytes, {tables} tables) to {}",
        args.database,
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn sync_dir(file: &Path) -> anyhow::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Writes the image (and a WAL, as older C dqlite sends one) to `path`,
/// folds the WAL in, checks integrity, syncs; returns the table count.
fn write_backup(path: &Path, wal_path: &Path, image: &[u8], wal: &[u8]) -> anyhow::Result<u64> {
    let bar = bytes_bar(image.len() as u64, format!("writing {}", path.display()));
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    for chunk in image.chunks(WRITE_CHUNK) {
        file.write_all(chunk)
            .with_context(|| format!("cannot write {}", path.display()))?;
        bar.inc(chunk.len() as u64);
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    bar.finish_and_clear();
    if !wal.is_empty() {
        std::fs::write(wal_path, wal)
            .with_context(|| format!("cannot write {}", wal_path.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // A plain rollback-journal file: the WAL, if any, is checkpointed in.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .context("cannot fold the WAL into the backup")?;
    ensure!(
        mode.eq_ignore_ascii_case("delete"),
        "journal mode stayed {mode}"
    );
    check_integrity(&conn).context("the backup is damaged")?;
    let tables = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .context("cannot read the backup's schema")?;
    drop(conn);
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(tables)
}

fn check_integrity(conn: &Connection) -> anyhow::Result<()> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ensure!(
        lines == ["ok"],
        "integrity check failed: {}",
        lines.join("; ")
    );
    Ok(())
}

/// One schema object of the file being restored.
struct Object {
    kind: String,
    name: String,
    sql: String,
}

/// A table's rows as the restore reads them.
struct Table {
    name: String,
    /// Whether the table has a rowid (not WITHOUT ROWID): it is kept.
    rowid: bool,
    columns: Vec<String>,
    rows: u64,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn read_schema(conn: &Connection) -> anyhow::Result<(Vec<Object>, Vec<Table>)> {
    let mut stmt = conn.prepare(
        "SELECT type, name, sql FROM sqlite_master \
         WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
    )?;
    let objects: Vec<Object> = stmt
        .query_map([], |r| {
            Ok(Object {
                kind: r.get(0)?,
                name: r.get(1)?,
                sql: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    if let Some(v) = objects.iter().find(|o| {
        o.sql
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL TABLE")
    }) {
        bail!(
            "table {} is a virtual table (FTS, R*Tree, ...): restore copies ordinary tables, \
             indexes, views and triggers only",
            v.name
        );
    }
    let mut tables = Vec::new();
    for o in objects.iter().filter(|o| o.kind == "table") {
        let wr: i64 = conn.query_row(
            &format!(
                "SELECT wr FROM pragma_table_list({})",
                quote_literal(&o.name)
            ),
            [],
            |r| r.get(0),
        )?;
        let mut info = conn.prepare(&format!("PRAGMA table_info({})", quote(&o.name)))?;
        let columns: Vec<String> = info
            .query_map([], |r| r.get(1))?
            .collect::<Result<_, _>>()?;
        let rows: u64 = conn.query_row(
            &format!("SELECT count(*) FROM {}", quote(&o.name)),
            [],
            |r| r.get(0),
        )?;
        tables.push(Table {
            name: o.name.clone(),
            rowid: wr == 0,
            columns,
            rows,
        });
    }
    Ok((objects, tables))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn to_value(v: ValueRef<'_>) -> (Value, usize) {
    match v {
        ValueRef::Null => (Value::Null, 1),
        ValueRef::Integer(n) => (Value::Integer(n), 8),
        ValueRef::Real(f) => (Value::Float(f), 8),
        ValueRef::Text(t) => (
            Value::Text(String::from_utf8_lossy(t).into_owned()),
            t.len(),
        ),
        ValueRef::Blob(b) => (Value::Blob(b.to_vec()), b.len()),
    }
}

/// Runs `dqlite-rs restore`.
pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let source = Connection::open_with_flags(
        &args.file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", args.file.display()))?;
    check_integrity(&source).with_context(|| format!("{} is damaged", args.file.display()))?;
    let (objects, tables) =
        read_schema(&source).with_context(|| format!("cannot read {}", args.file.display()))?;
    let pragma = |name: &str| -> anyhow::Result<i64> {
        Ok(source.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
    };
    let user_version = pragma("user_version")?;
    let application_id = pragma("application_id")?;
    let sequences: Vec<(String, i64)> = if source.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0
    {
        let mut stmt = source.prepare("SELECT name, seq FROM sqlite_sequence")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows
    } else {
        Vec::new()
    };

    runtime()?.block_on(async {
        let mut db = leader(&args.servers)
            .await?
            .open(&args.database)
            .await
            .with_context(|| format!("cannot open database {}", args.database))?;
        let existing = db
            .query_all("SELECT count(*) FROM sqlite_master", ())
            .await?;
        let existing: i64 = existing.first().map(|r| r.get(0)).transpose()?.unwrap_or(0);
        if existing > 0 {
            bail!(
                "database {} already has a schema: restore loads into a new, empty database",
                args.database
            );
        }
        // Rows go in table by table: references between them are
        // checked by the source's own integrity, not row by row.
        db.exec("PRAGMA foreign_keys = OFF", ()).await?;
        for o in objects.iter().filter(|o| o.kind == "table") {
            db.exec(&o.sql, ())
                .await
                .with_context(|| format!("cannot create table {}", o.name))?;
        }
        let total: u64 = tables.iter().map(|t| t.rows).sum();
        let bar = ProgressBar::new(total).with_message(format!("restoring {}", args.database));
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rows ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        for table in &tables {
            copy_table(&source, &mut db, table, &bar)
                .await
                .with_context(|| format!("cannot copy table {}", table.name))?;
        }
        bar.finish_and_clear();
        if !sequences.is_empty() {
            db.exec("DELETE FROM sqlite_sequence", ()).await?;
            for (name, seq) in &sequences {
                db.exec(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                    vec![Value::Text(name.clone()), Value::Integer(*seq)],
                )
                .await?;
            }
        }
        // Indexes, views and triggers after the rows: building an index
        // once is cheaper, and no trigger fires on restored rows.
        for o in objects.iter().filter(|o| o.kind != "table") {
            db.exec(&o.sql, ())
                .await
                .with_context(|| format!("cannot create {} {}", o.kind, o.name))?;
        }
        db.exec(&format!("PRAGMA user_version = {user_version}"), ())
            .await?;
        db.exec(&format!("PRAGMA application_id = {application_id}"), ())
            .await?;
        verify(&mut db, &tables).await?;
        println!(
            "restored {} ({} tables, {total} rows) from {}",
            args.database,
            tables.len(),
            args.file.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Copies every row of `table`, in multi-row INSERTs grouped into
/// transactions of bounded size.
async fn copy_table(
    source: &Connection,
    db: &mut Database,
    table: &Table,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut names: Vec<String> = table.columns.iter().map(|c| quote(c)).collect();
    if table.rowid {
        names.insert(0, "_rowid_".to_owned());
    }
    if names.is_empty() {
        return Ok(());
    }
    let select = format!("SELECT {} FROM {}", names.join(", "), quote(&table.name));
    let insert = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(&table.name),
        names.join(", ")
    );
    let row_placeholders = format!("({})", vec!["?"; names.len()].join(", "));
    let mut stmt = source.prepare(&select)?;
    let mut rows = stmt.query([])?;
    let mut values: Vec<Value> = Vec::new();
    let (mut in_statement, mut statement_bytes, mut transaction_bytes) = (0usize, 0usize, 0usize);
    let mut open = false;
    loop {
        let row = rows.next()?;
        if let Some(row) = row {
            for i in 0..names.len() {
                let (v, size) = to_value(row.get_ref(i)?);
                values.push(v);
                statement_bytes += size;
            }
            in_statement += 1;
        }
        let last = row.is_none();
        if in_statement > 0
            && (last || in_statement >= STATEMENT_ROWS || statement_bytes >= STATEMENT_BYTES)
        {
            if !open {
                db.exec("BEGIN", ()).await?;
                open = true;
            }
            let sql = format!(
                "{insert}{}",
                vec![row_placeholders.as_str(); in_statement].join(", ")
            );
            db.exec(&sql, std::mem::take(&mut values)).await?;
            bar.inc(in_statement as u64);
            transaction_bytes += statement_bytes;
            in_statement = 0;
            statement_bytes = 0;
        }
        if open && (last || transaction_bytes >= TRANSACTION_BYTES) {
            db.exec("COMMIT", ()).await?;
            open = false;
            transaction_bytes = 0;
        }
        if last {
            return Ok(());
        }
    }
}

/// The restored database passes SQLite's integrity check and holds as
/// many rows per table as the file.
async fn verify(db: &mut Database, tables: &[Table]) -> anyhow::Result<()> {
    let lines: Vec<String> = db
        .query_all("PRAGMA integrity_check", ())
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    ensure!(
        lines == ["ok"],
        "the restored database fails its integrity check: {}",
        lines.join("; ")
    );
    for t in tables {
        let rows = db
            .query_all(&format!("SELECT count(*) FROM {}", quote(&t.name)), ())
            .await?;
        let n: i64 = rows.first().map(|r| r.get(0)).transpose()?.unwrap_or(-1);
        ensure!(
            u64::try_from(n) == Ok(t.rows),
            "table {} has {n} rows after restore, the file has {}",
            t.name,
            t.rows
        );
    }
    Ok(())
}
