//! The per-connection gateway: the state of one client session (its open
//! database and prepared statements) and what each request does.
//!
//! SQLite work goes to blocking threads; a query hands back a stream of
//! framed ROWS messages that the connection writes as they come, so a large
//! result is never held whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_wire::error::{
    DQLITE_NOTFOUND, DQLITE_PARSE, SQLITE_BUSY, SQLITE_ERROR, SQLITE_IOERR, SQLITE_NOTFOUND,
    SQLITE_PROTOCOL,
};
use dqlite_wire::{File, Request, Response, Role};
use rusqlite::{Connection, InterruptHandle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterError};
use crate::databases::{Databases, Unsettled};
use crate::policy;
use crate::read_mode::{self, ReadMode, ReadModePragma};
use crate::sql::{self, Access, Failure, Prepared};
use crate::writers::Writers;

/// What every connection shares.
pub(crate) struct Shared {
    pub databases: Arc<dyn Databases>,
    pub cluster: Arc<dyn Cluster>,
    pub heartbeat_timeout_ms: u64,
    /// Reported by DESCRIBE.
    pub failure_domain: u64,
    /// Set by WEIGHT, reported by DESCRIBE; kept in memory, as dqlite does.
    pub weight: AtomicU64,
    /// Per database, the queue of statements that may write, served in
    /// arrival order.
    pub writers: Mutex<HashMap<String, Arc<Writers>>>,
    /// Statements, connections and errors, for the embedder's metrics.
    pub metrics: crate::metrics::ServerMetrics,
}

impl Shared {
    fn writer_queue(&self, database: &str) -> Arc<Writers> {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = writers.get(database) {
            return Arc::clone(queue);
        }
        Arc::clone(writers.entry(database.to_owned()).or_default())
    }
}

/// How long a statement waits for the writers queued ahead of it before it
/// is answered SQLITE_BUSY, like SQLite's busy timeout.
const WRITER_WAIT: Duration = Duration::from_secs(1);

/// How a request is answered.
pub(crate) enum Reply {
    /// One response.
    One(Response),
    /// A stream of framed ROWS messages, then maybe a FAILURE.
    Rows(RowsStream),
}

/// A query running on a blocking thread.
pub(crate) struct RowsStream {
    /// Framed ROWS messages, in order; bounded so a slow client slows the
    /// query instead of growing memory.
    pub batches: mpsc::Receiver<Vec<u8>>,
    /// The query's outcome once every batch is sent.
    pub done: JoinHandle<Result<(), Failure>>,
    stop: Arc<AtomicBool>,
    interrupt: Arc<InterruptHandle>,
}

impl RowsStream {
    /// Stops the query at its next row.
    pub fn interrupt(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.interrupt.interrupt();
    }
}

/// Messages a query may run ahead of the client.
const BATCHES_IN_FLIGHT: usize = 4;

/// A prepared statement slot.
enum Stmt {
    /// Compiled by SQLite.
    Sql(Prepared),
    /// `PRAGMA dqlite_read_mode`, which the gateway answers itself.
    ReadMode(ReadModePragma),
}

struct OpenDb {
    name: String,
    conn: Arc<Mutex<Connection>>,
    interrupt: Arc<InterruptHandle>,
    /// Statement ids are slots, lowest free first, as dqlite allocates them.
    stmts: Vec<Option<Stmt>>,
}

/// Where a statement runs: on the leader, or as a read on a follower
/// (the session chose follower reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serve {
    Leader,
    FollowerRead,
}

impl Serve {
    fn access(self) -> Access {
        match self {
            Serve::Leader => Access::ReadWrite,
            Serve::FollowerRead => Access::ReadOnly,
        }
    }
}

/// One client session.
pub(crate) struct Gateway {
    shared: Arc<Shared>,
    legacy: bool,
    db: Option<OpenDb>,
    /// Leadership was lost with a transaction open and it was rolled
    /// back: the session's next statement is told so (10506) even if this
    /// node leads again by then, rather than running outside the
    /// transaction the client believes it is in.
    lost_transaction: bool,
    /// Where this session's reads may be served (`PRAGMA dqlite_read_mode`).
    read_mode: ReadMode,
}

/// What a statement in flight when leadership was lost answers.
pub(crate) fn leadership_lost_failure() -> Failure {
    Failure::new(
        dqlite_wire::error::SQLITE_IOERR_LEADERSHIP_LOST,
        "leadership lost: the statement may or may not have taken effect",
    )
}

fn not_leader() -> Response {
    Response::failure(dqlite_wire::error::SQLITE_IOERR_NOT_LEADER, "not leader")
}

fn no_db() -> Response {
    Response::failure(SQLITE_NOTFOUND, "no database opened")
}

fn no_stmt() -> Response {
    Response::failure(SQLITE_NOTFOUND, "no statement with the given id")
}

/// The RESULT of a statement that changed nothing.
fn empty_result() -> Response {
    Response::Result {
        last_insert_id: 0,
        rows_affected: 0,
    }
}

/// A bounded-stale read refused: this node's data is older than the bound
/// and it could not confirm with the leader.
fn too_stale(bound: Duration, age: Option<Duration>, why: &ClusterError) -> Response {
    let age = age.map_or_else(
        || "never confirmed its data with the leader".to_owned(),
        |a| {
            format!(
                "last confirmed its data with the leader {} ms ago",
                a.as_millis()
            )
        },
    );
    Response::failure(
        dqlite_wire::error::SQLITE_IOERR_NOT_LEADER,
        format!(
            "not leader: follower read refused: this node {age}, more than the {} ms \
             allowed (dqlite_read_mode = stale:{}), and cannot reach the leader now ({why})",
            bound.as_millis(),
            bound.as_millis()
        ),
    )
}

fn cluster_failure(e: ClusterError) -> Response {
    Response::failure(e.code(), e.to_string())
}

pub(crate) fn internal(what: &str) -> Failure {
    Failure::new(SQLITE_IOERR, format!("internal error: {what}"))
}

/// Runs `f` on a blocking thread with the connection locked, and answers
/// only once what it wrote or read has committed. Even an error waits: it
/// may have been caused by data that then never commits (a constraint hit
/// on a row still in flight), and then the client is told that instead.
/// Also says whether `f` committed an entry of its own.
async fn with_conn<T: Send + 'static>(
    databases: &Arc<dyn Databases>,
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
) -> Result<(T, bool), Failure> {
    let conn = Arc::clone(conn);
    let databases = Arc::clone(databases);
    let (result, unsettled) = tokio::task::spawn_blocking(move || {
        let guard = conn
            .lock()
            .map_err(|_| internal("connection lock poisoned"))?;
        let result = f(&guard);
        Ok::<_, Failure>((result, databases.unsettled()))
    })
    .await
    .map_err(|_| internal("SQL task failed"))??;
    settled(result, unsettled).await
}

/// Waits, here and not on the SQL thread (no thread waits for the
/// commit), until what a statement wrote or read has committed.
async fn settled<T>(
    result: Result<T, Failure>,
    unsettled: Box<dyn Unsettled>,
) -> Result<(T, bool), Failure> {
    let wrote = unsettled.settled().await?;
    result.map(|r| (r, wrote))
}

impl Gateway {
    pub(crate) fn new(shared: Arc<Shared>, legacy: bool) -> Self {
        Self {
            shared,
            legacy,
            db: None,
            lost_transaction: false,
            read_mode: ReadMode::default(),
        }
    }

    /// This node stopped leading: roll back the session's open
    /// transaction, so nothing uncommitted stays visible to it and the
    /// store's writer slot is free for the next leader term. Statements
    /// and the connection itself stay; they answer NOT_LEADER until this
    /// node leads again.
    pub(crate) async fn leadership_lost(&mut self) {
        let Some(open) = &self.db else { return };
        let conn = Arc::clone(&open.conn);
        let databases = Arc::clone(&self.shared.databases);
        let rolled_back = tokio::task::spawn_blocking(move || {
            let Ok(conn) = conn.lock() else { return false };
            if conn.is_autocommit() {
                return false;
            }
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::debug!("rollback after leadership loss: {e}");
            }
            // Nobody waits for what the rollback read: the entries are
            // failing or committing without this session.
            databases.forget();
            true
        })
        .await
        .unwrap_or(false);
        self.lost_transaction |= rolled_back;
    }

    /// Whether this node leads now.
    pub(crate) fn leads(&self) -> bool {
        self.cluster().is_leader()
    }

    fn cluster(&self) -> &dyn Cluster {
        self.shared.cluster.as_ref()
    }

    /// Checks where the statement may run, then takes a read barrier so
    /// what it reads is at least as new as anything acknowledged (on a
    /// follower: the leader's read index, applied here), or for a
    /// bounded-stale session on a follower, as new as its bound asks.
    ///
    /// Inside an open transaction the barrier is skipped: SQLite reads the
    /// snapshot the transaction started on, which the barrier of its first
    /// statement already covered, and a COMMIT must reach consensus (and
    /// fail with leadership-lost there) rather than stop at a barrier.
    async fn read_barrier(&mut self) -> Result<Serve, Response> {
        let serve = self.require_session()?;
        if self.in_transaction() {
            return Ok(serve);
        }
        if let (Serve::FollowerRead, ReadMode::Stale(bound)) = (serve, self.read_mode) {
            if self.cluster().staleness().is_some_and(|age| age <= bound) {
                return Ok(serve);
            }
            // Too old: confirm with the leader now, or refuse.
            return match self.cluster().barrier().await {
                Ok(()) => Ok(serve),
                Err(e) => Err(too_stale(bound, self.cluster().staleness(), &e)),
            };
        }
        self.cluster().barrier().await.map_err(cluster_failure)?;
        Ok(serve)
    }

    /// Where a statement may run, and whether its read barrier is still to
    /// be taken. When this node leads and its state holds every entry of
    /// earlier terms, the statement starts at once and the barrier is taken
    /// after it or while it runs (EXEC: [`Gateway::exec`]; queries:
    /// [`Gateway::rows_after`]). Every write acknowledged before the
    /// statement arrived was applied here before it starts, and a barrier
    /// that succeeds after that shows that no other leader wrote
    /// meanwhile: what the statement read is what a barrier first would
    /// have let it read. Otherwise (and inside a transaction, where
    /// [`Gateway::read_barrier`] takes none) the barrier comes first.
    async fn statement_access(&mut self) -> Result<(Access, bool), Response> {
        let after = !self.in_transaction() && self.cluster().barrier_after();
        let serve = if after {
            self.require_session()?
        } else {
            self.read_barrier().await?
        };
        Ok((serve.access(), after))
    }

    /// A query's rows, once the barrier taken while it ran (`barrier`)
    /// succeeded: until then they wait in the query's bounded queue, and
    /// if it fails none leaves and the query stops.
    async fn rows_after(&self, rows: RowsStream, barrier: bool) -> Result<Reply, Response> {
        if barrier {
            if let Err(e) = self.cluster().barrier().await {
                rows.interrupt();
                return Err(cluster_failure(e));
            }
        }
        Ok(Reply::Rows(rows))
    }

    /// Refuses a statement on a node that does not lead, unless the
    /// session reads from followers (then its statements run read-only),
    /// and the first one after this session's transaction was rolled back
    /// by a leadership change.
    fn require_session(&mut self) -> Result<Serve, Response> {
        let leads = self.cluster().is_leader();
        let follower_reads = self.read_mode != ReadMode::Leader;
        if std::mem::take(&mut self.lost_transaction) {
            return Err(if leads || follower_reads {
                leadership_lost_failure().into_response()
            } else {
                not_leader()
            });
        }
        match (leads, follower_reads) {
            (true, _) => Ok(Serve::Leader),
            (false, true) => Ok(Serve::FollowerRead),
            (false, false) => Err(not_leader()),
        }
    }

    /// Answers `PRAGMA dqlite_read_mode`: sets the session's mode when a
    /// value is given; either way the mode in force is the answer.
    fn read_mode_pragma(&mut self, pragma: ReadModePragma) -> Result<ReadMode, Response> {
        self.db(0)?;
        if let Some(mode) = pragma {
            self.read_mode = mode.map_err(|e| Response::failure(SQLITE_ERROR, e.to_string()))?;
        }
        Ok(self.read_mode)
    }

    /// The read mode as a one-row result, through SQLite so it streams
    /// like any query.
    fn read_mode_rows(&mut self, pragma: ReadModePragma) -> Result<Reply, Response> {
        let mode = self.read_mode_pragma(pragma)?.to_string();
        let open = self.db(0)?;
        let sql = format!("SELECT ? AS {}", read_mode::PRAGMA);
        let params = vec![dqlite_wire::Value::Text(mode)];
        Ok(Reply::Rows(spawn_query(
            &self.shared.databases,
            open,
            move |c, stop, sink, committed| {
                sql::query_sql(c, &sql, &params, Access::ReadOnly, stop, sink, committed)
            },
        )))
    }

    /// Runs an EXEC. A statement that commits an entry needs no read
    /// barrier: the entry applies only on the version it read, so its
    /// commit proves that what it read was current. When this leader holds
    /// every entry of earlier terms, the statement therefore runs at once,
    /// and only one that committed nothing confirms leadership afterwards,
    /// before its answer leaves; otherwise the barrier comes first.
    ///
    /// Outside a transaction, statements that may write wait their turn in
    /// the database's queue (first come, first served) instead of colliding
    /// in SQLite's lock and retrying; the turn ends when the statement has
    /// run, before it waits for its commit, so the next one builds on it.
    ///
    /// On a follower (a session reading from followers) statements run
    /// read-only: one that may write answers NOT_LEADER before it runs.
    async fn exec(
        &mut self,
        db: u64,
        readonly: bool,
        run: impl FnOnce(&Connection, Access) -> Result<sql::ExecResult, Failure> + Send + 'static,
    ) -> Result<Response, Response> {
        let in_transaction = self.in_transaction();
        let (access, barrier_after) = self.statement_access().await?;
        let open = self.db(db)?;
        let databases = &self.shared.databases;
        let result = if in_transaction || readonly || access == Access::ReadOnly {
            with_conn(databases, &open.conn, move |c| run(c, access)).await
        } else {
            let queue = self.shared.writer_queue(&open.name);
            let statement = Box::new(move |c: &Connection| run(c, access));
            // Never started (busy): nothing ran, so no barrier either.
            let (result, settled) = queue
                .run(databases, &open.conn, statement, WRITER_WAIT)
                .await
                .map_err(Failure::into_response)?;
            settled.and_then(|wrote| result.map(|r| (r, wrote)))
        };
        if barrier_after && !matches!(result, Ok((_, true))) {
            self.cluster().barrier().await.map_err(cluster_failure)?;
        }
        Ok(result.map_or_else(Failure::into_response, |(r, _)| r.into_response()))
    }

    fn in_transaction(&self) -> bool {
        let Some(open) = &self.db else { return false };
        // Between requests nothing else holds the connection; if something
        // did, taking the barrier is the safe choice.
        match open.conn.try_lock() {
            Ok(conn) => !conn.is_autocommit(),
            Err(_) => false,
        }
    }

    fn db(&self, id: u64) -> Result<&OpenDb, Response> {
        match &self.db {
            Some(db) if id == 0 => Ok(db),
            _ => Err(no_db()),
        }
    }

    fn stmt(&self, db: u32, stmt: u32) -> Result<(&OpenDb, &Stmt), Response> {
        let open = self.db(u64::from(db))?;
        let prepared = open
            .stmts
            .get(stmt as usize)
            .and_then(Option::as_ref)
            .ok_or_else(no_stmt)?;
        Ok((open, prepared))
    }

    /// Answers one request.
    pub(crate) async fn handle(&mut self, req: Request) -> Reply {
        // A removed node serves nothing: NOT_LEADER (nothing was done,
        // retry elsewhere) with a message naming where to go instead.
        if let Some(why) = self.cluster().removed() {
            return Reply::One(Response::failure(
                dqlite_wire::error::SQLITE_IOERR_NOT_LEADER,
                why,
            ));
        }
        match self.dispatch(req).await {
            Ok(reply) => reply,
            Err(resp) => Reply::One(resp),
        }
    }

    async fn dispatch(&mut self, req: Request) -> Result<Reply, Response> {
        let one = |r: Response| Ok(Reply::One(r));
        match req {
            Request::Leader => one(self.leader()),
            Request::Client { .. } => one(Response::Welcome {
                heartbeat_timeout: self.shared.heartbeat_timeout_ms,
            }),
            Request::Heartbeat { .. } => one(Response::failure(DQLITE_PARSE, "unrecognized request type")),
            Request::Open { name, .. } => self.open(name).await.map(Reply::One),
            Request::Prepare { db, sql, with_tail } => self.prepare(db, sql, with_tail).await.map(Reply::One),
            Request::Exec { db, stmt, params } => {
                let (sql, readonly) = match self.stmt(db, stmt)?.1 {
                    Stmt::ReadMode(pragma) => {
                        self.read_mode_pragma(pragma.clone())?;
                        return one(empty_result());
                    }
                    Stmt::Sql(prepared) => (prepared.sql.clone(), prepared.readonly),
                };
                // A write on a follower is refused before any barrier.
                if !readonly && self.read_mode != ReadMode::Leader && !self.cluster().is_leader() {
                    return Err(sql::write_on_follower().into_response());
                }
                self.exec(u64::from(db), readonly, move |c, access| sql::exec(c, &sql, &params, access)).await.map(Reply::One)
            }
            Request::ExecSql { db, sql, params } => {
                if let Some(pragma) = read_mode::parse_pragma(&sql) {
                    self.db(db)?;
                    self.read_mode_pragma(pragma)?;
                    return one(empty_result());
                }
                self.exec(db, false, move |c, access| sql::exec_sql(c, &sql, &params, access)).await.map(Reply::One)
            }
            Request::Query { db, stmt, params } => {
                if let Stmt::ReadMode(pragma) = self.stmt(db, stmt)?.1 {
                    let pragma = pragma.clone();
                    return self.read_mode_rows(pragma);
                }
                let (access, barrier) = self.statement_access().await?;
                let (open, Stmt::Sql(prepared)) = self.stmt(db, stmt)? else {
                    return Err(no_stmt());
                };
                let sql = prepared.sql.clone();
                let rows = spawn_query(&self.shared.databases, open, move |c, stop, sink, committed| {
                    sql::query(c, &sql, &params, access, stop, sink, committed)
                });
                self.rows_after(rows, barrier).await
            }
            Request::QuerySql { db, sql, params } => {
                if let Some(pragma) = read_mode::parse_pragma(&sql) {
                    self.db(db)?;
                    return self.read_mode_rows(pragma);
                }
                let (access, barrier) = self.statement_access().await?;
                let open = self.db(db)?;
                let rows = spawn_query(&self.shared.databases, open, move |c, stop, sink, committed| {
                    sql::query_sql(c, &sql, &params, access, stop, sink, committed)
                });
                self.rows_after(rows, barrier).await
            }
            Request::Finalize { db, stmt } => {
                self.stmt(db, stmt)?;
                if let Some(open) = self.db.as_mut() {
                    open.stmts[stmt as usize] = None;
                }
                one(Response::Empty)
            }
            // A query in progress is interrupted by the connection loop;
            // here there is nothing running.
            Request::Interrupt { .. } => one(Response::Empty),
            Request::Connect { .. } => one(Response::failure(
                DQLITE_PARSE,
                "raft connections are not accepted on the client protocol: peers talk HTTP under /raft/",
            )),
            Request::Add { id, address } => {
                self.require_leader()?;
                one(self.cluster().add(id, &address).await.map_or_else(cluster_failure, |()| Response::Empty))
            }
            Request::Assign { id, role } => {
                self.require_leader()?;
                let role = match role {
                    None => Role::Voter,
                    Some(code) => Role::from_code(code)
                        .ok_or_else(|| Response::failure(SQLITE_ERROR, format!("unknown role {code}")))?,
                };
                one(self.cluster().assign(id, role).await.map_or_else(cluster_failure, |()| Response::Empty))
            }
            Request::Remove { id } => {
                self.require_leader()?;
                one(self.cluster().remove(id).await.map_or_else(cluster_failure, |()| Response::Empty))
            }
            Request::Transfer { id } => {
                self.require_leader()?;
                one(self.cluster().transfer(id).await.map_or_else(cluster_failure, |()| Response::Empty))
            }
            Request::Dump { name } => self.dump(name).await.map(Reply::One),
            Request::Cluster { format } => {
                if format > 1 {
                    return Err(Response::failure(DQLITE_PARSE, "unrecognized cluster format"));
                }
                one(Response::Servers {
                    format,
                    nodes: self.cluster().nodes(),
                })
            }
            Request::Describe { format } => {
                if format != 0 {
                    return Err(Response::failure(SQLITE_PROTOCOL, "bad format version"));
                }
                let (failure_domain, weight) = self.cluster().metadata().unwrap_or((
                    self.shared.failure_domain,
                    self.shared.weight.load(Ordering::Relaxed),
                ));
                one(Response::Metadata {
                    failure_domain,
                    weight,
                })
            }
            Request::Weight { weight } => {
                self.shared.weight.store(weight, Ordering::Relaxed);
                // The registry keeps it, so it survives restarts and the
                // role manager sees it.
                one(self.cluster().set_weight(weight).await.map_or_else(cluster_failure, |()| Response::Empty))
            }
        }
    }

    /// PREPARE needs the leader, or a session that reads from followers
    /// (a write prepared there fails when executed).
    fn require_session_for_prepare(&self) -> Result<(), Response> {
        if self.read_mode == ReadMode::Leader {
            self.require_leader()
        } else {
            Ok(())
        }
    }

    fn require_leader(&self) -> Result<(), Response> {
        if self.cluster().is_leader() {
            Ok(())
        } else {
            Err(not_leader())
        }
    }

    fn leader(&self) -> Response {
        let cluster = self.cluster();
        // Only voters report a leader, as dqlite does: a standby or spare
        // may not know it reliably.
        let leader = if cluster.this_node().role == Role::Voter {
            cluster.leader()
        } else {
            None
        };
        let (id, address) = leader.map_or((0, String::new()), |n| (n.id, n.address));
        if self.legacy {
            Response::ServerLegacy { address }
        } else {
            Response::Server { id, address }
        }
    }

    async fn open(&mut self, name: String) -> Result<Response, Response> {
        if self.db.is_some() {
            return Err(Response::failure(
                SQLITE_BUSY,
                "a database for this connection is already open",
            ));
        }
        let (name, mode) = read_mode::split_name(&name)
            .map_err(|e| Response::failure(SQLITE_ERROR, e.to_string()))?;
        // Only a session that asks for follower reads opens on a follower;
        // any other gets NOT_LEADER here, as from dqlite 1.18.2, which
        // clients rely on to move to the leader.
        let read_mode = mode.unwrap_or(self.read_mode);
        if read_mode == ReadMode::Leader {
            self.require_leader()?;
        }
        let databases = Arc::clone(&self.shared.databases);
        let db_name = name.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = databases.open(&db_name).map_err(Failure::from)?;
            // After the store set its own pragmas: the policy is for
            // client SQL only.
            policy::install(&conn);
            Ok::<_, Failure>(conn)
        })
        .await
        .map_err(|_| internal("open task failed").into_response())?
        .map_err(Failure::into_response)?;
        let interrupt = Arc::new(conn.get_interrupt_handle());
        self.read_mode = read_mode;
        self.db = Some(OpenDb {
            name,
            conn: Arc::new(Mutex::new(conn)),
            interrupt,
            stmts: Vec::new(),
        });
        Ok(Response::Db { id: 0 })
    }

    async fn prepare(
        &mut self,
        db: u64,
        sql: String,
        with_tail: bool,
    ) -> Result<Response, Response> {
        self.db(db)?;
        let (stmt, params, tail) = if let Some(pragma) = read_mode::parse_pragma(&sql) {
            if let Some(Err(e)) = &pragma {
                return Err(Response::failure(SQLITE_ERROR, e.to_string()));
            }
            let tail = with_tail.then_some(sql.len() as u64);
            (Stmt::ReadMode(pragma), 0, tail)
        } else {
            self.require_session_for_prepare()?;
            let open = self.db(db)?;
            let (prepared, _) = with_conn(&self.shared.databases, &open.conn, move |c| {
                sql::prepare(c, &sql, with_tail)
            })
            .await
            .map_err(Failure::into_response)?;
            let (params, tail) = (prepared.params, prepared.tail);
            (Stmt::Sql(prepared), params, tail)
        };
        let Some(open) = self.db.as_mut() else {
            return Err(no_db());
        };
        let id = match open.stmts.iter().position(Option::is_none) {
            Some(free) => {
                open.stmts[free] = Some(stmt);
                free
            }
            None => {
                open.stmts.push(Some(stmt));
                open.stmts.len() - 1
            }
        };
        Ok(Response::Stmt {
            db: 0,
            id: u32::try_from(id)
                .map_err(|_| Response::failure(SQLITE_ERROR, "too many statements"))?,
            params,
            tail,
        })
    }

    async fn dump(&self, name: String) -> Result<Response, Response> {
        let databases = Arc::clone(&self.shared.databases);
        let files = tokio::task::spawn_blocking(move || -> Result<Option<Vec<File>>, Failure> {
            let Some(conn) = databases.open_existing(&name)? else {
                return Ok(None);
            };
            // The image with the WAL merged in, as current dqlite dumps it;
            // the WAL file is then empty.
            let image = conn.serialize(rusqlite::DatabaseName::Main);
            databases.settle()?;
            let image = image?;
            Ok(Some(vec![
                File {
                    name: name.clone(),
                    data: image.to_vec(),
                },
                File {
                    name: format!("{name}-wal"),
                    data: Vec::new(),
                },
            ]))
        })
        .await
        .map_err(|_| internal("dump task failed").into_response())?
        .map_err(Failure::into_response)?;
        files
            .map(Response::Files)
            .ok_or_else(|| Response::failure(DQLITE_NOTFOUND, "database does not exist"))
    }

    /// The name of the open database, for logs.
    pub(crate) fn database(&self) -> Option<&str> {
        self.db.as_ref().map(|d| d.name.as_str())
    }
}

type QueryFn = dyn FnOnce(&Connection, &AtomicBool, &mut sql::Sink<'_>, &dyn Fn(bool)) -> Result<(), Failure>
    + Send;

/// Runs a query on a blocking thread. No batch leaves before what the
/// query read has committed; the snapshot is taken at its first step, so
/// once the first batch may go, all of them may. `run` gets
/// [`Databases::read_committed`] to switch on for its statement.
fn spawn_query(
    databases: &Arc<dyn Databases>,
    open: &OpenDb,
    run: impl FnOnce(&Connection, &AtomicBool, &mut sql::Sink<'_>, &dyn Fn(bool)) -> Result<(), Failure>
        + Send
        + 'static,
) -> RowsStream {
    let run: Box<QueryFn> = Box::new(run);
    let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    let stop = Arc::new(AtomicBool::new(false));
    let conn = Arc::clone(&open.conn);
    let task_stop = Arc::clone(&stop);
    let databases = Arc::clone(databases);
    let done = tokio::task::spawn_blocking(move || {
        let guard = conn
            .lock()
            .map_err(|_| internal("connection lock poisoned"))?;
        let mut unsettled = None;
        let read_committed = |on| databases.read_committed(on);
        let result = run(
            &guard,
            &task_stop,
            &mut |batch| {
                if let Err(f) = databases.settle() {
                    unsettled = Some(f);
                    return false;
                }
                tx.blocking_send(batch).is_ok()
            },
            &read_committed,
        );
        databases.settle()?;
        match unsettled {
            Some(f) => Err(f),
            None => result,
        }
    });
    RowsStream {
        batches: rx,
        done,
        stop,
        interrupt: Arc::clone(&open.interrupt),
    }
}
