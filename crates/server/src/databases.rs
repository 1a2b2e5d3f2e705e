//! Where SQLite connections come from. The gateway only ever asks this
//! trait for a connection, so the replicated page store of the cluster work
//! plugs in here (a connection over its VFS) without touching the gateway.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::dir::db_file_name;
use crate::sql::Failure;

/// A source of SQLite connections to named databases.
pub trait Databases: Send + Sync + 'static {
    /// Opens a new connection to database `name`, creating it if needed.
    fn open(&self, name: &str) -> rusqlite::Result<Connection>;

    /// Opens a connection to `name` only if the database exists.
    fn open_existing(&self, name: &str) -> rusqlite::Result<Option<Connection>>;

    /// Called on the SQL thread after a statement ran and before any of
    /// its response leaves: blocks until everything the statement wrote or
    /// read is committed, or fails with what the client must be told
    /// instead. `Ok(true)` when the statement committed an entry of its
    /// own through consensus (its commit proves leadership). Databases
    /// whose commits are durable when SQLite returns have nothing to wait
    /// for.
    fn settle(&self) -> Result<bool, Failure> {
        Ok(false)
    }

    /// Like [`Databases::settle`], but only takes what the statement left
    /// to wait for (on the SQL thread) and lets the caller await it on the
    /// async side, so no thread is parked while the entry replicates. The
    /// default settles at once.
    fn unsettled(&self) -> Box<dyn Unsettled> {
        Box::new(Settled(self.settle()))
    }

    /// Called on the SQL thread after work whose response nobody waits
    /// for (a rollback on leadership loss): forgets what it wrote or read
    /// without waiting, so that a later statement on the same thread does
    /// not wait for it.
    fn forget(&self) {}

    /// While `on`, read transactions started on this thread may read the
    /// committed state instead of writes still in flight, so they need not
    /// wait for them. Set around a read-only statement outside an explicit
    /// transaction, which has a read barrier of its own (before it, or
    /// while it runs on a leader that holds every entry of earlier terms).
    /// The default ignores it.
    fn read_committed(&self, on: bool) {
        let _ = on;
    }
}

/// What a statement's SQLite work left to wait for before its response
/// may leave (see [`Databases::unsettled`]).
pub trait Unsettled: Send {
    /// Resolves to whether the statement committed an entry of its own,
    /// once everything it wrote or read committed, or fails with what the
    /// client must be told instead.
    fn settled(self: Box<Self>) -> BoxFuture<'static, Result<bool, Failure>>;
}

/// A boxed future, as [`Unsettled`] returns it.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Nothing left to wait for.
struct Settled(Result<bool, Failure>);

impl Unsettled for Settled {
    fn settled(self: Box<Self>) -> BoxFuture<'static, Result<bool, Failure>> {
        Box::pin(std::future::ready(self.0))
    }
}

/// Databases as files under `<dir>/db/`, in WAL mode with a full fsync at
/// every commit: the single-node store.
#[derive(Debug, Clone)]
pub struct LocalDatabases {
    dir: PathBuf,
    busy_timeout: Duration,
}

/// How many compiled statements each connection keeps for reuse.
const STATEMENT_CACHE: usize = 128;

impl LocalDatabases {
    /// Databases stored in `dir`. A writer that finds the database locked
    /// waits up to `busy_timeout` before failing with `SQLITE_BUSY`.
    pub fn new(dir: PathBuf, busy_timeout: Duration) -> Self {
        Self { dir, busy_timeout }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(db_file_name(name))
    }

    fn connect(&self, name: &str, flags: OpenFlags) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(self.path(name), flags)?;
        conn.busy_timeout(self.busy_timeout)?;
        // WAL lets readers run beside the one writer; FULL makes every
        // commit durable before it is acknowledged.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

fn flags() -> OpenFlags {
    // Each connection is used by one task at a time, so SQLite's own
    // per-connection mutex is not needed.
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

impl Databases for LocalDatabases {
    fn open(&self, name: &str) -> rusqlite::Result<Connection> {
        self.connect(name, flags() | OpenFlags::SQLITE_OPEN_CREATE)
    }

    fn open_existing(&self, name: &str) -> rusqlite::Result<Option<Connection>> {
        if !self.path(name).exists() {
            return Ok(None);
        }
        self.connect(name, flags()).map(Some)
    }
}
