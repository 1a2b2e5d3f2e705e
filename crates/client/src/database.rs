//! [`Database`]: SQL on an open database, prepared [`Statement`]s and
//! [`Transaction`]s.

use std::ops::{Deref, DerefMut};

use dqlite_wire::{ReadMode, Request, Response};

use crate::{Client, Config, Error, Params, Result, Row, Rows};

/// What an executed statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecResult {
    /// The last inserted rowid on this connection.
    pub last_insert_id: i64,
    /// Rows changed by the (last) statement.
    pub rows_affected: u64,
}

/// A connection with an open database.
///
/// ```no_run
/// # async fn example() -> dqlite_client::Result<()> {
/// use dqlite_client::{params, Database};
/// let mut db = Database::connect(&["127.0.0.1:9001"], "app.db").await?;
/// db.exec("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)", ()).await?;
/// db.exec("INSERT INTO kv VALUES (?, ?)", params!["a", vec![1u8, 2]]).await?;
/// let rows = db.query("SELECT k, v FROM kv", ()).await?.all().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Database {
    client: Client,
    name: String,
    id: u32,
    /// A [`Transaction`] was dropped without commit or rollback: send
    /// ROLLBACK before the next statement.
    rollback_pending: bool,
}

impl Database {
    pub(crate) fn new(client: Client, name: &str, id: u32) -> Database {
        Database {
            client,
            name: name.to_owned(),
            id,
            rollback_pending: false,
        }
    }

    /// Finds the leader among `addresses` (default [`Config`]) and opens
    /// database `name` on it.
    pub async fn connect<S: AsRef<str>>(addresses: &[S], name: &str) -> Result<Database> {
        Database::connect_with(addresses, name, &Config::default()).await
    }

    /// Like [`Database::connect`] with a given configuration. With
    /// follower reads ([`Config::read_mode`] not `Leader`), opens on the
    /// first of `addresses` that accepts a connection, in order, with no
    /// leader discovery.
    pub async fn connect_with<S: AsRef<str>>(
        addresses: &[S],
        name: &str,
        config: &Config,
    ) -> Result<Database> {
        if config.read_mode == ReadMode::Leader {
            return Client::find_leader(addresses, config)
                .await?
                .open(name)
                .await;
        }
        let mut last = None;
        for address in addresses {
            match Client::connect(address.as_ref(), config).await {
                Ok(client) => return client.open(name).await,
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument("no server addresses given".into())))
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying connection, for admin calls on the same node.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Executes SQL text: one or more statements (EXEC_SQL). Parameters
    /// are bound in order.
    pub async fn exec(&mut self, sql: &str, params: impl Params) -> Result<ExecResult> {
        self.settle_transaction().await?;
        let request = Request::ExecSql {
            db: u64::from(self.id),
            sql: sql.to_owned(),
            params: params.into_values(),
        };
        self.result(&request, may_write(sql)).await
    }

    /// Runs one query (QUERY_SQL) and streams its rows.
    pub async fn query(&mut self, sql: &str, params: impl Params) -> Result<Rows<'_>> {
        self.settle_transaction().await?;
        let request = Request::QuerySql {
            db: u64::from(self.id),
            sql: sql.to_owned(),
            params: params.into_values(),
        };
        self.rows(&request, may_write(sql)).await
    }

    /// Runs one query and collects every row: for results known to be
    /// small (a count, a lookup); stream larger ones with [`Database::query`].
    pub async fn query_all(&mut self, sql: &str, params: impl Params) -> Result<Vec<Row>> {
        self.query(sql, params).await?.all().await
    }

    /// Prepares one statement. Finalize it with [`Statement::finalize`]
    /// when done; the server frees it with the connection otherwise.
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        self.settle_transaction().await?;
        let request = Request::Prepare {
            db: u64::from(self.id),
            sql: sql.to_owned(),
            with_tail: false,
        };
        match self.client.call(&request).await? {
            Response::Stmt { db, id, params, .. } => Ok(Statement {
                connection: self.client.transport.id(),
                db,
                id,
                params,
                may_write: may_write(sql),
            }),
            other => Err(self.client.unexpected("STMT", &other)),
        }
    }

    /// Starts a transaction (EXEC_SQL "BEGIN", as go-dqlite does).
    ///
    /// ```no_run
    /// # async fn example(db: &mut dqlite_client::Database) -> dqlite_client::Result<()> {
    /// let mut tx = db.begin().await?;
    /// tx.exec("UPDATE accounts SET balance = balance - 10 WHERE id = 1", ()).await?;
    /// tx.exec("UPDATE accounts SET balance = balance + 10 WHERE id = 2", ()).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin(&mut self) -> Result<Transaction<'_>> {
        self.exec("BEGIN", ()).await?;
        Ok(Transaction {
            db: self,
            open: true,
        })
    }

    /// Sends the ROLLBACK a dropped [`Transaction`] owes. Its own failure
    /// (e.g. no transaction active any more) does not matter.
    async fn settle_transaction(&mut self) -> Result<()> {
        if self.rollback_pending {
            self.rollback_pending = false;
            let request = Request::ExecSql {
                db: u64::from(self.id),
                sql: "ROLLBACK".to_owned(),
                params: Vec::new(),
            };
            match self.client.call(&request).await {
                Ok(_) => {}
                Err(err) if err.breaks_connection() => return Err(err),
                Err(err) => tracing::debug!(error = %err, "rollback of a dropped transaction"),
            }
        }
        Ok(())
    }

    /// Sends an SQL request. If the connection breaks once it may have
    /// reached the server, a statement that may write has an unknown
    /// outcome, and the error says so.
    async fn sql_call(&mut self, request: &Request, may_write: bool) -> Result<Response> {
        self.client.call(request).await.map_err(|err| {
            if may_write && err.broke_in_flight() {
                Error::OutcomeUnknown {
                    cause: Box::new(err),
                }
            } else {
                err
            }
        })
    }

    async fn result(&mut self, request: &Request, may_write: bool) -> Result<ExecResult> {
        match self.sql_call(request, may_write).await? {
            Response::Result {
                last_insert_id,
                rows_affected,
            } => Ok(ExecResult {
                // The signed rowid travels reinterpreted as u64.
                last_insert_id: last_insert_id as i64,
                rows_affected,
            }),
            other => Err(self.client.unexpected("RESULT", &other)),
        }
    }

    async fn rows(&mut self, request: &Request, may_write: bool) -> Result<Rows<'_>> {
        match self.sql_call(request, may_write).await? {
            Response::Rows(first) => Ok(Rows::new(&mut self.client.transport, first)),
            other => Err(self.client.unexpected("ROWS", &other)),
        }
    }
}

/// A prepared statement on one connection. A handle: it does not borrow
/// the [`Database`], so several can be kept; using it on another
/// connection is an error.
#[derive(Debug)]
#[must_use = "finalize a prepared statement when done with it"]
pub struct Statement {
    connection: u64,
    db: u32,
    id: u32,
    params: u64,
    may_write: bool,
}

impl Statement {
    /// The statement id the server assigned.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Number of parameters the statement takes.
    pub fn param_count(&self) -> u64 {
        self.params
    }

    fn check(&self, db: &Database) -> Result<()> {
        if db.client.transport.id() != self.connection {
            return Err(Error::InvalidArgument(
                "statement was prepared on another connection".into(),
            ));
        }
        Ok(())
    }

    /// Executes the statement (EXEC).
    pub async fn exec(&self, db: &mut Database, params: impl Params) -> Result<ExecResult> {
        self.check(db)?;
        db.settle_transaction().await?;
        let request = Request::Exec {
            db: self.db,
            stmt: self.id,
            params: params.into_values(),
        };
        db.result(&request, self.may_write).await
    }

    /// Runs the statement as a query (QUERY) and streams its rows.
    pub async fn query<'a>(&self, db: &'a mut Database, params: impl Params) -> Result<Rows<'a>> {
        self.check(db)?;
        db.settle_transaction().await?;
        let request = Request::Query {
            db: self.db,
            stmt: self.id,
            params: params.into_values(),
        };
        db.rows(&request, self.may_write).await
    }

    /// Runs the statement as a query and collects every row (small results).
    pub async fn query_all(&self, db: &mut Database, params: impl Params) -> Result<Vec<Row>> {
        self.query(db, params).await?.all().await
    }

    /// Frees the statement on the server (FINALIZE).
    pub async fn finalize(self, db: &mut Database) -> Result<()> {
        self.check(db)?;
        let request = Request::Finalize {
            db: self.db,
            stmt: self.id,
        };
        match db.client.call(&request).await? {
            Response::Empty => Ok(()),
            other => Err(db.client.unexpected("EMPTY", &other)),
        }
    }
}

/// An open transaction; derefs to the [`Database`] for statements.
///
/// End it with [`Transaction::commit`] or [`Transaction::rollback`]. If
/// it is dropped instead, ROLLBACK is sent before the connection's next
/// statement.
#[derive(Debug)]
#[must_use = "a transaction is rolled back unless committed"]
pub struct Transaction<'a> {
    db: &'a mut Database,
    open: bool,
}

impl Transaction<'_> {
    /// COMMIT. If it fails, the transaction is rolled back before the
    /// connection's next statement (SQLite keeps it open after a failed
    /// COMMIT, e.g. on `SQLITE_BUSY`).
    pub async fn commit(mut self) -> Result<ExecResult> {
        let result = self.db.exec("COMMIT", ()).await;
        self.open = result.is_err();
        result
    }

    /// ROLLBACK. If it fails, it is tried again before the connection's
    /// next statement.
    pub async fn rollback(mut self) -> Result<ExecResult> {
        let result = self.db.exec("ROLLBACK", ()).await;
        self.open = result.is_err();
        result
    }
}

impl Deref for Transaction<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.db
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Database {
        self.db
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            self.db.rollback_pending = true;
        }
    }
}

/// Whether `sql` may change the database, judged by its first keyword:
/// only statements that surely do not write (SELECT, VALUES, EXPLAIN,
/// BEGIN, ROLLBACK) are spared the "may or may not have been applied"
/// warning when their connection breaks.
fn may_write(sql: &str) -> bool {
    let mut rest = sql;
    // Each pass strips whitespace and at most one comment; bounded by
    // the text's length.
    for _ in 0..sql.len().saturating_add(1) {
        let trimmed = rest.trim_start();
        if let Some(after) = trimmed.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = trimmed.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            rest = trimmed;
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    !matches!(
        word.as_str(),
        "SELECT" | "VALUES" | "EXPLAIN" | "BEGIN" | "ROLLBACK"
    )
}

#[cfg(test)]
mod tests {
    use super::may_write;

    #[test]
    fn reads_are_told_apart_from_possible_writes() {
        for sql in [
            "SELECT 1",
            "  select * from t",
            "-- c\nVALUES (1)",
            "/* x */ EXPLAIN SELECT 1",
            "BEGIN",
        ] {
            assert!(!may_write(sql), "{sql:?}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "COMMIT",
            "WITH x AS (SELECT 1) DELETE FROM t",
            "update t set v = 1",
        ] {
            assert!(may_write(sql), "{sql:?}");
        }
    }
}
