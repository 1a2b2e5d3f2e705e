//! Runs parsed commands against a cluster through `dqlite-client`.
//!
//! The SQL connection is opened lazily and dropped after any error that
//! leaves it unusable (leadership change, broken socket), so the next
//! command runs leader discovery again: the shell rides over a failover.
//!
//! Interrupting: the shell's Ctrl-C handler sets a shared flag. A result
//! being streamed checks it before each row and ends with INTERRUPT, which
//! leaves the connection usable. A call still waiting for its answer is
//! abandoned instead (dqlite's INTERRUPT only stops a streaming result):
//! the connection is closed and the next statement opens a new one.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dqlite_client::{Client, Config, Database, Error, Value};
use dqlite_wire::error::SQLITE_ERROR;
use serde_json::json;

use super::command::{Command, HELP};
use super::format::{Format, ResultWriter};

/// How often a call waiting for its answer looks at the interrupt flag.
const INTERRUPT_POLL: Duration = Duration::from_millis(20);

/// A command stopped by Ctrl-C.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    /// A streaming result was ended with INTERRUPT; the connection is fine.
    #[error("interrupted")]
    Result,
    /// A call was abandoned before its answer; whether a write in it was
    /// applied is unknown.
    #[error(
        "interrupted before the server answered; the statement may or may not have run \
         (the next statement reconnects)"
    )]
    Call,
}

/// What the caller should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

pub struct Session {
    servers: Vec<String>,
    database: String,
    format: Format,
    config: Config,
    db: Option<Database>,
    /// `.timer on`: print each SQL statement's run time.
    timer: bool,
    /// Set by Ctrl-C; cleared by the shell before each input.
    interrupt: Arc<AtomicBool>,
}

impl Session {
    pub fn new(
        servers: Vec<String>,
        database: String,
        format: Format,
        config: Config,
        interrupt: Arc<AtomicBool>,
    ) -> Self {
        Session {
            servers,
            database,
            format,
            config,
            db: None,
            timer: false,
            interrupt,
        }
    }

    /// Runs one command, writing its output to `out`.
    pub async fn run(&mut self, command: Command, out: &mut dyn Write) -> anyhow::Result<Flow> {
        match command {
            Command::Nothing => {}
            Command::Quit => return Ok(Flow::Quit),
            Command::Help => writeln!(out, "{HELP}")?,
            Command::Leader => {
                let mut leader = self.leader_client().await?;
                match leader.leader().await? {
                    Some(l) => writeln!(out, "{}", l.address)?,
                    None => writeln!(out)?,
                }
            }
            Command::Cluster => {
                let nodes = self.leader_client().await?.cluster().await?;
                match self.format {
                    Format::Json => {
                        let list: Vec<_> = nodes
                            .iter()
                            .map(|n| json!({"id": n.id, "address": n.address, "role": n.role.name()}))
                            .collect();
                        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                    }
                    format => {
                        let columns = ["id", "address", "role"].map(String::from);
                        let mut writer = ResultWriter::new(format, &mut *out, &columns)?;
                        for n in &nodes {
                            writer.row(&[
                                Value::Text(format!("{:x}", n.id)),
                                Value::Text(n.address.clone()),
                                Value::Text(n.role.name().to_owned()),
                            ])?;
                        }
                        writer.finish()?;
                    }
                }
            }
            Command::Describe(address) => {
                let meta = Client::connect(&address, &self.config)
                    .await?
                    .describe()
                    .await?;
                match self.format {
                    Format::Json => writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "address": address,
                            "failure_domain": meta.failure_domain,
                            "weight": meta.weight,
                        }))?
                    )?,
                    _ => writeln!(out, "{address}|{}|{}", meta.failure_domain, meta.weight)?,
                }
            }
            Command::Weight(address, weight) => {
                Client::connect(&address, &self.config)
                    .await?
                    .set_weight(weight)
                    .await?;
            }
            Command::Remove(address) => {
                let mut leader = self.leader_client().await?;
                let nodes = leader.cluster().await?;
                let Some(node) = nodes.iter().find(|n| n.address == address) else {
                    bail!("no node has address {address:?}");
                };
                leader
                    .remove(node.id)
                    .await
                    .with_context(|| format!("remove node {address:?}"))?;
            }
            Command::Dump(address) => {
                let mut node = match address {
                    Some(address) => Client::connect(&address, &self.config).await?,
                    None => self.leader_client().await?,
                };
                let files = node.dump(&self.database).await?;
                let dir = std::env::current_dir().context("cannot read the current directory")?;
                for file in files {
                    let path = dump_path(&dir, &file.name)?;
                    std::fs::write(&path, &file.data)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    writeln!(out, "wrote {} ({} bytes)", path.display(), file.data.len())?;
                }
            }
            Command::Query(sql) => {
                let started = Instant::now();
                let result = self.query(&sql, out).await;
                self.report_time(started, out)?;
                result?
            }
            Command::Exec(sql) => {
                let started = Instant::now();
                let result = self.exec(&sql).await;
                self.report_time(started, out)?;
                result?
            }
            Command::Timer(on) => self.timer = on,
            Command::Mode(format) => self.format = format,
            Command::Tables => {
                let sql = "SELECT name FROM sqlite_schema \
                           WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' \
                           ORDER BY name";
                for name in self.column_of(sql, Vec::new()).await? {
                    writeln!(out, "{name}")?;
                }
            }
            Command::Schema(table) => {
                let sql = "SELECT sql FROM sqlite_schema \
                           WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' \
                           AND tbl_name LIKE ? ORDER BY tbl_name, type DESC, name";
                let pattern = Value::Text(table.unwrap_or_else(|| "%".to_owned()));
                for sql in self.column_of(sql, vec![pattern]).await? {
                    writeln!(out, "{sql};")?;
                }
            }
            // The shell reads the file: it owns where input comes from.
            Command::Read(_) => bail!(".read runs only from the shell's input"),
        }
        Ok(Flow::Continue)
    }

    /// With `.timer on`, prints how long a SQL command took.
    fn report_time(&self, started: Instant, out: &mut dyn Write) -> std::io::Result<()> {
        if self.timer {
            writeln!(out, "Run Time: real {:.3}", started.elapsed().as_secs_f64())?;
        }
        Ok(())
    }

    /// The first column of a small query's rows, as text.
    async fn column_of(&mut self, sql: &str, params: Vec<Value>) -> anyhow::Result<Vec<String>> {
        let db = self.database().await?;
        let result = db
            .query_all(sql, params)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|rows| {
                rows.iter()
                    .map(|r| r.get::<String>(0).map_err(anyhow::Error::from))
                    .collect()
            });
        self.checked(result)
    }

    async fn query(&mut self, sql: &str, out: &mut dyn Write) -> anyhow::Result<()> {
        let format = self.format;
        let interrupt = self.interrupt.clone();
        let db = self.database().await?;
        let result = async {
            let Some(rows) = until_interrupted(&interrupt, db.query(sql, ())).await else {
                return Err(Interrupted::Call.into());
            };
            let mut rows = rows?;
            if rows.columns().is_empty() {
                // A statement without result columns (current servers).
                while rows.next().await?.is_some() {}
                return Ok::<_, anyhow::Error>(());
            }
            let mut writer = ResultWriter::new(format, &mut *out, rows.columns())?;
            while let Some(row) = rows.next().await? {
                if interrupt.load(Ordering::Relaxed) {
                    // Ends the result with INTERRUPT: the connection stays.
                    drop(writer);
                    rows.close().await?;
                    return Err(Interrupted::Result.into());
                }
                writer.row(row.values())?;
            }
            writer.finish()?;
            Ok(())
        }
        .await;
        match result {
            // C dqlite 1.11 refuses a query without result columns (and
            // does not run it): run it as a statement instead.
            Err(err) if is_zero_column_refusal(&err) => self.exec(sql).await,
            other => self.checked(other),
        }
    }

    async fn exec(&mut self, sql: &str) -> anyhow::Result<()> {
        let interrupt = self.interrupt.clone();
        let db = self.database().await?;
        let result = match until_interrupted(&interrupt, db.exec(sql, ())).await {
            Some(result) => result.map(|_| ()).map_err(anyhow::Error::from),
            None => Err(Interrupted::Call.into()),
        };
        self.checked(result)
    }

    /// Drops the connection after errors that leave it unusable.
    fn checked<T>(&mut self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(err) = &result {
            let broken = err
                .downcast_ref::<Error>()
                .is_some_and(Error::needs_reconnect);
            let abandoned = matches!(err.downcast_ref::<Interrupted>(), Some(Interrupted::Call));
            if broken || abandoned {
                self.db = None;
            }
        }
        result
    }

    async fn database(&mut self) -> anyhow::Result<&mut Database> {
        if self.db.is_none() {
            let connect = Database::connect_with(&self.servers, &self.database, &self.config);
            let Some(db) = until_interrupted(&self.interrupt, connect).await else {
                bail!(Interrupted::Result);
            };
            self.db = Some(db?);
        }
        self.db.as_mut().context("no connection")
    }

    async fn leader_client(&self) -> anyhow::Result<Client> {
        Ok(Client::find_leader(&self.servers, &self.config).await?)
    }
}

/// Runs `call` unless Ctrl-C comes first (`None` then; `call` is dropped).
async fn until_interrupted<F: Future>(flag: &AtomicBool, call: F) -> Option<F::Output> {
    let interrupted = async {
        // Ends when the flag is set; the select ends it otherwise.
        while !flag.load(Ordering::Relaxed) {
            tokio::time::sleep(INTERRUPT_POLL).await;
        }
    };
    tokio::select! {
        biased;
        output = call => Some(output),
        () = interrupted => None,
    }
}

fn is_zero_column_refusal(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<Error>(),
        Some(Error::Sql { code, message }) if *code == SQLITE_ERROR && message == "not an error"
    )
}

/// Where a dumped file goes: `dir/NAME`, refusing names that would leave
/// `dir` (the name comes from the server).
fn dump_path(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let plain = Path::new(name)
        .file_name()
        .is_some_and(|f| f == std::ffi::OsStr::new(name));
    if !plain || name == "." || name == ".." {
        bail!("refusing to write dumped file with unsafe name {name:?}");
    }
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_paths_stay_in_the_directory() {
        let dir = Path::new("/tmp/x");
        assert_eq!(dump_path(dir, "demo").unwrap(), dir.join("demo"));
        assert_eq!(dump_path(dir, "demo-wal").unwrap(), dir.join("demo-wal"));
        for bad in ["", ".", "..", "../etc/passwd", "/etc/passwd", "a/b"] {
            assert!(dump_path(dir, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_column_refusal_is_recognised() {
        let err = anyhow::Error::from(Error::from_failure(1, "not an error".into()));
        assert!(is_zero_column_refusal(&err));
        let err = anyhow::Error::from(Error::from_failure(1, "syntax error".into()));
        assert!(!is_zero_column_refusal(&err));
    }
}
