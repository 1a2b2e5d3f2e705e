//! Runs parsed commands against a cluster through `dqlite-client`.
//!
//! The SQL connection is opened lazily and dropped after any error that
//! leaves it unusable (leadership change, broken socket), so the next
//! command runs leader discovery again: the shell rides over a failover.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use dqlite_client::{Client, Config, Database, Error};
use dqlite_wire::error::SQLITE_ERROR;
use serde_json::json;

use super::command::{Command, HELP};
use super::format::{Format, ResultWriter, TableWriter};

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
}

impl Session {
    pub fn new(servers: Vec<String>, database: String, format: Format, config: Config) -> Self {
        Session {
            servers,
            database,
            format,
            config,
            db: None,
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
                    Format::Tabular => {
                        let columns = ["id", "address", "role"].map(String::from);
                        let mut table = TableWriter::new(&mut *out, &columns);
                        for n in &nodes {
                            table.row(&[
                                dqlite_client::Value::Text(format!("{:x}", n.id)),
                                dqlite_client::Value::Text(n.address.clone()),
                                dqlite_client::Value::Text(n.role.name().to_owned()),
                            ])?;
                        }
                        table.finish()?;
                    }
                    Format::Json => {
                        let list: Vec<_> = nodes
                            .iter()
                            .map(|n| json!({"id": n.id, "address": n.address, "role": n.role.name()}))
                            .collect();
                        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                    }
                }
            }
            Command::Describe(address) => {
                let meta = Client::connect(&address, &self.config)
                    .await?
                    .describe()
                    .await?;
                match self.format {
                    Format::Tabular => {
                        writeln!(out, "{address}|{}|{}", meta.failure_domain, meta.weight)?
                    }
                    Format::Json => writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "address": address,
                            "failure_domain": meta.failure_domain,
                            "weight": meta.weight,
                        }))?
                    )?,
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
            Command::Query(sql) => self.query(&sql, out).await?,
            Command::Exec(sql) => self.exec(&sql).await?,
        }
        Ok(Flow::Continue)
    }

    async fn query(&mut self, sql: &str, out: &mut dyn Write) -> anyhow::Result<()> {
        let format = self.format;
        let db = self.database().await?;
        let result = async {
            let mut rows = db.query(sql, ()).await?;
            if rows.columns().is_empty() {
                // A statement without result columns (current servers).
                while rows.next().await?.is_some() {}
                return Ok::<_, anyhow::Error>(());
            }
            let mut writer = ResultWriter::new(format, &mut *out, rows.columns())?;
            while let Some(row) = rows.next().await? {
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
        let db = self.database().await?;
        let result = db
            .exec(sql, ())
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from);
        self.checked(result)
    }

    /// Drops the connection after errors that leave it unusable.
    fn checked(&mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        if let Err(err) = &result {
            if err
                .downcast_ref::<Error>()
                .is_some_and(Error::needs_reconnect)
            {
                self.db = None;
            }
        }
        result
    }

    async fn database(&mut self) -> anyhow::Result<&mut Database> {
        if self.db.is_none() {
            let db = Database::connect_with(&self.servers, &self.database, &self.config).await?;
            self.db = Some(db);
        }
        self.db.as_mut().context("no connection")
    }

    async fn leader_client(&self) -> anyhow::Result<Client> {
        Ok(Client::find_leader(&self.servers, &self.config).await?)
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
