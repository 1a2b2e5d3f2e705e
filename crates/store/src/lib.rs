//! Replicated SQLite. SQLite runs over this crate's VFS; the pages a
//! transaction writes stay in its handle until the commit point, where they
//! become one consensus entry. Every node — the leader included — applies
//! committed entries through [`StoreState`], the same code everywhere, so
//! the database images after index *i* are identical on every node.
//!
//! Layout:
//! - [`entry`]: the replication unit and its encoding.
//! - [`pages`]: the versioned page store (immutable versions sharing
//!   pages; readers keep theirs, so they never block the writer).
//! - `handle`: one SQLite file handle: locks, read snapshot, overlay,
//!   commit.
//! - [`chain`]: each database's entries in flight (the speculative chain
//!   new transactions build on), their tickets, and [`settle`], which
//!   holds a response until what its statement wrote or read commits.
//! - [`vfs`]: the SQLite VFS; its `ffi` module holds the crate's only
//!   unsafe code.
//! - [`fsm`]: the consensus [`dqlite_consensus::State`]: apply, snapshot,
//!   restore.
//!
//! The `sim-bugs` feature compiles `Broken` and `Store::set_broken`:
//! deliberate bugs in the real commit and apply paths that the simulator
//! (`dqlite-sim --node store --broken ...`) must catch. They stay off unless
//! set, so a build that unifies the feature behaves as before.
//!
//! ```
//! // Without a proposer, commits apply locally (tests, tools).
//! let store = dqlite_store::Store::memory().unwrap();
//! let conn = store.open("app.db").unwrap();
//! conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)").unwrap();
//! assert!(dqlite_store::settle(std::time::Duration::from_secs(1)).unwrap());
//! assert_eq!(store.seq("app.db"), Some(2));
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod chain;
mod checkpoint;
pub mod disk;
pub mod entry;
pub mod fsm;
mod handle;
pub mod pages;
#[allow(unsafe_code)]
pub mod vfs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use imbl::OrdMap;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use rusqlite::{Connection, OpenFlags};

pub use chain::{pending, read_committed, settle, Pending, SettleError};
pub use fsm::StoreState;

use disk::{BaseFile, Checkpoint, CheckpointDb, DiskDir};
use entry::{Decoded, Entry};
use pages::Version;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Bytes that should be an entry or snapshot are not.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// SQLite refused to register the VFS.
    #[error("cannot register the SQLite VFS (code {0})")]
    Vfs(i32),
    /// A disk-mode file (the checkpoint record, a database file or its
    /// page checksums) fails its checksum at open.
    #[error("{detail}")]
    Damaged {
        /// The damaged file.
        file: PathBuf,
        /// What is wrong (naming the file).
        detail: String,
    },
    /// A disk-mode file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a proposal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; nothing was replicated.
    #[error("not leader")]
    NotLeader,
    /// Leadership was lost while the entry was in flight: it may still
    /// commit.
    #[error("leadership lost")]
    LeadershipLost,
    /// No outcome in time: the entry may still commit.
    #[error("timed out")]
    Timeout,
    /// The disk is full: nothing was replicated; writes are refused until
    /// space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Deliberately broken behaviours of real code paths, for the simulator's
/// canaries: each must make `dqlite-sim --node store` fail. Compiled only
/// with the `sim-bugs` feature and off unless [`Store::set_broken`] is
/// called, so a build that unifies the feature behaves as before.
#[cfg(feature = "sim-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Broken {
    /// Behave correctly.
    #[default]
    None,
    /// A commit's ticket resolves as soon as its entry is proposed, not
    /// when it is applied: the client is told of a commit that may never
    /// happen.
    AckBeforeCommit,
    /// The node that built an entry applies it a second time on top of the
    /// version it just made.
    ApplyTwice,
    /// The base check is skipped: a write transaction that read an older
    /// version than the head may take the writer slot, its entry names the
    /// head as its base, and apply takes stale entries on top of the
    /// version that replaced their base (lost updates).
    SkipBaseCheck,
}

/// Told when a proposed entry fails before it is applied here.
pub type OnFailure = Box<dyn FnOnce(ProposeError) + Send>;

/// Replicates entries. Called on a SQLite (blocking) thread at the commit
/// point, by the database's one writer, so the entries of a database are
/// proposed one at a time in the order they were built: it must hand the
/// entry over in that order and not wait for it to commit.
pub trait Proposer: Send + Sync + 'static {
    /// Hands `entry` to consensus. Its success is seen when it is applied
    /// through [`StoreState`]; if it fails before that (refused, dropped,
    /// leadership lost, no outcome in time), call `failed`, at once or
    /// later, from any thread.
    fn propose(&self, entry: Vec<u8>, failed: OnFailure);
}

/// One database: its current version and who may write it.
pub(crate) struct Db {
    pub(crate) name: String,
    state: Mutex<DbState>,
}

pub(crate) struct DbState {
    /// The committed version.
    pub(crate) current: Arc<Version>,
    /// Entries in flight above `current` (on the leader).
    pub(crate) chain: chain::Chain,
    /// The handle holding the RESERVED lock, if any.
    pub(crate) writer: Option<u64>,
    /// Disk mode: every version handed to a reader or a snapshot, and
    /// every version replaced, since the last checkpoint. A checkpoint
    /// writes the current version's pages into the file, which changes what
    /// any version older than the current one reads from it: while one of
    /// those is alive, the checkpoint waits.
    older: Vec<Weak<Version>>,
    /// How many of `older` were alive when it was last pruned.
    older_live: usize,
}

impl Db {
    fn new(name: &str, version: Version) -> Self {
        Self {
            name: name.to_owned(),
            state: Mutex::new(DbState {
                current: Arc::new(version),
                chain: chain::Chain::default(),
                writer: None,
                older: Vec::new(),
                older_live: 0,
            }),
        }
    }

    /// The lock is only held for pointer swaps and flag changes, never
    /// across I/O, so poisoning would mean a panic in that tiny section:
    /// the state is still consistent, keep going.
    pub(crate) fn lock(&self) -> MutexGuard<'_, DbState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn current(&self) -> Arc<Version> {
        Arc::clone(&self.lock().current)
    }
}

impl DbState {
    /// What a new transaction reads: the newest version in flight (and its
    /// ticket), or the committed one.
    pub(crate) fn head(&mut self) -> (Arc<Version>, Option<Arc<chain::Ticket>>) {
        let (version, ticket) = match self.chain.head() {
            Some((v, t)) => (Arc::clone(v), Some(Arc::clone(t))),
            None => (Arc::clone(&self.current), None),
        };
        self.track(&version);
        (version, ticket)
    }

    /// Records a version a reader may keep (disk mode: see `older`).
    fn track(&mut self, version: &Arc<Version>) {
        if version.base.is_none() {
            // Reads nothing from a file (memory mode, or not checkpointed
            // yet): no checkpoint can change what it reads.
            return;
        }
        // Prune as the list doubles, so tracking stays O(1) amortized.
        if self.older.len() >= 2 * self.older_live + 16 {
            self.older.retain(|w| w.strong_count() > 0);
            self.older_live = self.older.len();
        }
        self.older.push(Arc::downgrade(version));
    }
}

/// State shared by the store, its VFS and its consensus `State`.
pub(crate) struct Shared {
    dbs: Mutex<HashMap<String, Arc<Db>>>,
    proposer: RwLock<Option<Arc<dyn Proposer>>>,
    next_handle: AtomicU64,
    /// Disk mode: where the database files and the checkpoint record live.
    disk: Option<DiskDir>,
    /// The index the files held when the store was opened (disk mode).
    pub(crate) opened_at: u64,
    /// Bytes of changed pages held in memory since the last checkpoint.
    pending: AtomicU64,
    /// Disk mode: the generation of database files in use.
    generation: AtomicU64,
    /// Disk mode: the last generation handed to a restore. Each restore
    /// writes a generation of its own, so one prepared while another waits
    /// to be installed never overwrites its files.
    claimed: AtomicU64,
    /// Disk mode: checkpoints written and being written.
    checkpoints: checkpoint::Checkpoints,
    /// From each commit point of this node's transactions to its apply.
    commit_seconds: Histogram,
    /// The canary switched on, if any.
    #[cfg(feature = "sim-bugs")]
    broken: Mutex<Broken>,
}

/// A checkpoint is due once this many bytes of changed pages are held in
/// memory: it bounds a disk-mode node's memory, whatever the database size.
const CHECKPOINT_BYTES: u64 = 32 << 20;

impl Shared {
    fn dbs(&self) -> MutexGuard<'_, HashMap<String, Arc<Db>>> {
        self.dbs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db(&self, name: &str) -> Arc<Db> {
        Arc::clone(
            self.dbs()
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Db::new(name, Version::default()))),
        )
    }

    fn find(&self, name: &str) -> Option<Arc<Db>> {
        self.dbs().get(name).cloned()
    }

    /// Applies a committed entry: true if it was current, false if stale.
    /// Fails, applying nothing, only if a page the entry patches cannot be
    /// read from the base version (a damaged disk-mode file): the node must
    /// not go on applying without it.
    pub(crate) fn apply(&self, decoded: Decoded) -> std::io::Result<bool> {
        let db = self.db(&decoded.head.database);
        let mut st = db.lock();
        let id = decoded.head.id;
        let current = decoded.builds_on(&st.current);
        // The node that built the entry made its version when it handed the
        // entry over, from the same base and pages: that version is taken
        // instead of rebuilding every page from the entry. Only in memory
        // mode: in disk mode a checkpoint may since have moved the base's
        // pages to a new file.
        let built = (current && self.disk.is_none() && !self.canary())
            .then(|| st.chain.built(id))
            .flatten()
            .filter(|v| v.seq == st.current.seq + 1);
        let next = match built {
            Some(version) => Some(version),
            None => self.rebuild(&st, decoded, current)?.map(Arc::new),
        };
        let ok = match next {
            Some(next) => {
                let old = std::mem::replace(&mut st.current, next);
                st.track(&old);
                true
            }
            None => false,
        };
        if let Some(handed) = st.chain.applied(id, ok) {
            self.commit_seconds.observe(handed.elapsed().as_secs_f64());
        }
        Ok(ok)
    }

    /// The version `decoded` makes of the current one, rebuilt from its
    /// pages, or `None` if it is stale (`current`: it builds on the
    /// current version).
    fn rebuild(
        &self,
        st: &DbState,
        decoded: Decoded,
        current: bool,
    ) -> std::io::Result<Option<Version>> {
        // The canary rebuilds a stale entry on the current version: its
        // patches are rebuilt on that version too.
        #[cfg(feature = "sim-bugs")]
        let current = current || self.broken() == Broken::SkipBaseCheck;
        let entry = if current {
            decoded.resolve(&st.current)?
        } else {
            decoded.head
        };
        let next = st.current.apply(&entry);
        #[cfg(feature = "sim-bugs")]
        let next = self.broken_apply(st, &entry, next);
        if next.is_some() && self.disk.is_some() {
            let bytes = entry.pages.len() as u64 * u64::from(entry.page_size);
            self.pending.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(next)
    }

    /// A canary is switched on: the simulator's planted bugs change how
    /// entries are applied, so nothing is taken from the chain.
    #[cfg(feature = "sim-bugs")]
    fn canary(&self) -> bool {
        self.broken() != Broken::None
    }

    #[cfg(not(feature = "sim-bugs"))]
    fn canary(&self) -> bool {
        false
    }

    /// The canary switched on, if any.
    #[cfg(feature = "sim-bugs")]
    pub(crate) fn broken(&self) -> Broken {
        *self.broken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a broken apply makes of `next`, the correct result of applying
    /// `entry` to `st.current`.
    #[cfg(feature = "sim-bugs")]
    fn broken_apply(&self, st: &DbState, entry: &Entry, next: Option<Version>) -> Option<Version> {
        // The entry rebuilt on `on`, so the base check lets it through.
        let rebased = |on: &Version| Entry {
            base: on.seq,
            base_id: on.id,
            ..entry.clone()
        };
        match (self.broken(), next) {
            (Broken::SkipBaseCheck, None) => st.current.apply(&rebased(&st.current)),
            (Broken::ApplyTwice, Some(next)) if st.chain.oldest() == Some(entry.id) => {
                next.apply(&rebased(&next))
            }
            (_, next) => next,
        }
    }

    /// The generation of database files in use (disk mode).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A generation no restore has used yet, for the next one.
    pub(crate) fn claim_generation(&self) -> u64 {
        let current = self.generation();
        let mut claimed = self.claimed.load(Ordering::Relaxed);
        loop {
            let next = claimed.max(current) + 1;
            match self
                .claimed
                .compare_exchange(claimed, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(now) => claimed = now,
            }
        }
    }

    /// Whether the databases live in files (disk mode).
    pub(crate) fn is_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Disk mode: whether enough changed pages are in memory to checkpoint.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.disk.is_some() && self.pending.load(Ordering::Relaxed) >= CHECKPOINT_BYTES
    }

    /// Starts rebuilding database `name` from a snapshot, in disk mode into
    /// `generation` (from [`Shared::claim_generation`]).
    pub(crate) fn restorer(&self, name: &str, generation: u64) -> std::io::Result<Restorer> {
        Ok(match &self.disk {
            Some(disk) => {
                // Into a new generation: the current files stay intact
                // until the record switches over.
                let path = disk.db_path(name, generation)?;
                let _ = std::fs::remove_file(&path);
                Restorer::Disk(BaseFile::create(&path)?)
            }
            None => Restorer::Memory(OrdMap::new()),
        })
    }

    /// Replaces every database (snapshot restore). Open handles keep their
    /// `Db` and see the new versions from their next read transaction.
    pub(crate) fn replace_all(
        &self,
        versions: Vec<(String, Version)>,
        applied: u64,
        generation: u64,
    ) -> std::io::Result<()> {
        if let Some(disk) = &self.disk {
            let _no_checkpoint = self.checkpoints.exclude();
            let databases = versions
                .iter()
                .map(|(name, v)| CheckpointDb {
                    name: name.clone(),
                    seq: v.seq,
                    id: v.id,
                    page_size: v.page_size,
                    pages: v.pages,
                })
                .collect();
            disk.write_record(&Checkpoint {
                applied,
                generation,
                databases,
                sums: true,
            })?;
            self.generation.store(generation, Ordering::Relaxed);
            self.pending.store(0, Ordering::Relaxed);
            self.checkpoints.durable.store(applied, Ordering::Relaxed);
            // Open handles of old versions keep their files readable.
            disk.remove_older(generation);
        }
        let mut dbs = self.dbs();
        let mut seen = std::collections::HashSet::new();
        for (name, version) in versions {
            seen.insert(name.clone());
            match dbs.get(&name) {
                Some(db) => {
                    let mut st = db.lock();
                    st.current = Arc::new(version);
                    st.chain.clear(SettleError::LeadershipLost);
                }
                None => {
                    dbs.insert(name.clone(), Arc::new(Db::new(&name, version)));
                }
            }
        }
        for (name, db) in dbs.iter() {
            if !seen.contains(name) {
                let mut st = db.lock();
                st.current = Arc::new(Version::default());
                st.chain.clear(SettleError::LeadershipLost);
            }
        }
        Ok(())
    }

    /// Every database's committed version, by name, kept safe from later
    /// checkpoints (disk mode) for as long as they are held.
    pub(crate) fn freeze(&self) -> Vec<(String, Arc<Version>)> {
        let mut out: Vec<_> = self
            .dbs()
            .iter()
            .map(|(n, db)| {
                let mut st = db.lock();
                let v = Arc::clone(&st.current);
                st.track(&v);
                (n.clone(), v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Hands an entry of `db`'s chain to consensus, or, without a
    /// proposer, applies it at once.
    fn propose(&self, db: &Arc<Db>, entry: Entry, encoded: Vec<u8>) {
        let proposer = self
            .proposer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match proposer {
            Some(p) => {
                let db = Arc::downgrade(db);
                let id = entry.id;
                p.propose(
                    encoded,
                    Box::new(move |e| {
                        if let Some(db) = db.upgrade() {
                            db.lock().chain.failed(id, e.into());
                        }
                    }),
                );
            }
            // Applies to the version it was built on: its pages are whole
            // here, so applying cannot fail.
            None => {
                let _ = self.apply(entry.into());
            }
        }
    }
}

/// The VFS backend: each open file needs its own `Arc<Shared>`.
struct BackendHandle(Arc<Shared>);

impl vfs::Backend for BackendHandle {
    fn open_main(&self, name: &str) -> Result<Box<dyn vfs::File>, vfs::Code> {
        let db = self.0.db(name);
        let id = self.0.next_handle.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(handle::MainFile::new(Arc::clone(&self.0), db, id)))
    }

    fn exists(&self, name: &str) -> bool {
        self.0.find(name).is_some()
    }
}

/// Every replicated database of a node.
pub struct Store {
    shared: Arc<Shared>,
    registration: vfs::Registration,
}

static STORES: AtomicU64 = AtomicU64::new(0);

/// SQLite's own busy handler sleeps 1 ms or more at a time. A commit here
/// returns as soon as its entry is handed to consensus, so the writer slot
/// is held for microseconds: a waiting writer first yields, then naps
/// briefly, and gives up with SQLITE_BUSY after about a second.
fn retry_busy(attempt: i32) -> bool {
    match attempt {
        0..64 => std::thread::yield_now(),
        64..256 => std::thread::sleep(Duration::from_micros(100)),
        256..1200 => std::thread::sleep(Duration::from_millis(1)),
        _ => return false,
    }
    true
}

/// A free name beside `dir` to move it aside to: `<dir>.corrupt`, then
/// `<dir>.corrupt.1`, ...
fn aside_name(dir: &Path) -> PathBuf {
    let base = format!("{}.corrupt", dir.display());
    let mut aside = PathBuf::from(&base);
    let mut n = 0;
    while aside.exists() {
        n += 1;
        aside = PathBuf::from(format!("{base}.{n}"));
    }
    aside
}

impl Store {
    /// A store holding its databases in memory; they persist through
    /// consensus snapshots and the log.
    pub fn memory() -> Result<Arc<Store>, StoreError> {
        Self::build(HashMap::new(), None, 0, 0)
    }

    /// A store keeping each database in a file under `dir`, so a database
    /// is not limited by memory. Reopening the directory brings back what
    /// the last checkpoint recorded; consensus replays the rest.
    pub fn disk(dir: &Path) -> Result<Arc<Store>, StoreError> {
        Self::disk_with(dir, false)
    }

    /// Like [`Store::disk`]. With `auto_recovery`, a checkpoint record or a
    /// database page that fails its checksum makes the whole directory move aside
    /// (`<dir>.corrupt`, never deleted) and the store start empty. The
    /// node's snapshots hold no copy of the files (they are the snapshot),
    /// so consensus sets its snapshots and log aside too and the node
    /// catches up from its peers behind a fence.
    pub fn disk_with(dir: &Path, auto_recovery: bool) -> Result<Arc<Store>, StoreError> {
        match Self::open_disk(dir) {
            Err(StoreError::Damaged { file, detail }) if auto_recovery => {
                let aside = aside_name(dir);
                tracing::warn!(
                    file = %file.display(),
                    aside = %aside.display(),
                    detail,
                    "auto-recovery set the damaged disk-mode databases aside; they are rebuilt from the peers (the snapshots hold no copy of them)"
                );
                std::fs::rename(dir, &aside).map_err(|source| StoreError::Io {
                    context: format!("cannot move {} aside", dir.display()),
                    source,
                })?;
                Self::open_disk(dir)
            }
            other => other,
        }
    }

    fn open_disk(dir: &Path) -> Result<Arc<Store>, StoreError> {
        let io = |context: String| move |source| StoreError::Io { context, source };
        let damaged = |file: PathBuf| {
            move |e: std::io::Error| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    StoreError::Damaged {
                        file,
                        detail: e.to_string(),
                    }
                } else {
                    StoreError::Io {
                        context: format!("cannot read {}", file.display()),
                        source: e,
                    }
                }
            }
        };
        let disk = DiskDir::new(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let record = disk.read_record().map_err(damaged(disk.record_path()))?;
        let mut dbs = HashMap::new();
        for db in &record.databases {
            let path = disk
                .db_path(&db.name, record.generation)
                .map_err(io(format!("database {:?}", db.name)))?;
            let base =
                BaseFile::open_verified(&path, db.page_size, db.pages, record.sums, record.applied)
                    .map_err(damaged(path.clone()))?;
            let version = Version {
                seq: db.seq,
                id: db.id,
                page_size: db.page_size,
                pages: db.pages,
                data: OrdMap::new(),
                base: Some(Arc::new(base)),
            };
            dbs.insert(db.name.clone(), Arc::new(Db::new(&db.name, version)));
        }
        // Files of restores prepared but never installed.
        disk.remove_others(record.generation);
        Self::build(dbs, Some(disk), record.applied, record.generation)
    }

    fn build(
        dbs: HashMap<String, Arc<Db>>,
        disk: Option<DiskDir>,
        opened_at: u64,
        generation: u64,
    ) -> Result<Arc<Store>, StoreError> {
        let shared = Arc::new(Shared {
            dbs: Mutex::new(dbs),
            proposer: RwLock::new(None),
            next_handle: AtomicU64::new(1),
            disk,
            opened_at,
            pending: AtomicU64::new(0),
            generation: AtomicU64::new(generation),
            claimed: AtomicU64::new(generation),
            checkpoints: checkpoint::Checkpoints::new(opened_at),
            // 100 µs to about 6.5 s.
            commit_seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 17)),
            #[cfg(feature = "sim-bugs")]
            broken: Mutex::new(Broken::None),
        });
        let name = format!("dqlite-rs-{}", STORES.fetch_add(1, Ordering::Relaxed));
        let registration = vfs::register(&name, Arc::new(BackendHandle(Arc::clone(&shared))))
            .map_err(StoreError::Vfs)?;
        Ok(Arc::new(Store {
            shared,
            registration,
        }))
    }

    /// Routes commits through `proposer` from now on. Without one, commits
    /// apply locally at once (a store that is not replicated).
    pub fn set_proposer(&self, proposer: Arc<dyn Proposer>) {
        *self
            .shared
            .proposer
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(proposer);
    }

    /// Switches a canary on (or off with [`Broken::None`]): simulator only.
    #[cfg(feature = "sim-bugs")]
    #[doc(hidden)]
    pub fn set_broken(&self, broken: Broken) {
        *self.shared.broken.lock().unwrap_or_else(|e| e.into_inner()) = broken;
    }

    /// A new SQLite connection to database `name`, created if needed.
    pub fn open(&self, name: &str) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags_and_vfs(name, flags, self.registration.name())?;
        conn.busy_handler(Some(retry_busy))?;
        // The journal only serves rollback inside this process: the page
        // store, not a journal file, is what survives a crash.
        conn.pragma_update(None, "journal_mode", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(conn)
    }

    /// A connection to `name` if the database exists on this node.
    pub fn open_existing(&self, name: &str) -> rusqlite::Result<Option<Connection>> {
        if self.shared.find(name).is_none() {
            return Ok(None);
        }
        self.open(name).map(Some)
    }

    /// The consensus state machine over this store.
    pub fn state(self: &Arc<Self>) -> StoreState {
        StoreState::new(Arc::clone(&self.shared))
    }

    /// The committed image of database `name`.
    pub fn image(&self, name: &str) -> Option<Vec<u8>> {
        self.shared
            .find(name)
            .and_then(|db| db.current().image().ok())
    }

    /// Disk mode: writes every change held in memory into the database
    /// files now. False if a reader still holds an older version.
    pub fn checkpoint(&self, applied: u64) -> Result<bool, StoreError> {
        self.shared
            .checkpoint(applied)
            .map_err(|source| StoreError::Io {
                context: "checkpoint failed".into(),
                source,
            })
    }

    /// How many transactions database `name` has committed.
    pub fn seq(&self, name: &str) -> Option<u64> {
        self.shared.find(name).map(|db| db.current().seq)
    }

    /// Seconds from the commit point of each transaction committed through
    /// this node to its apply here (a handle on the live histogram).
    pub fn commit_seconds(&self) -> Histogram {
        self.shared.commit_seconds.clone()
    }

    /// The names of every database this node holds.
    pub fn databases(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.dbs().keys().cloned().collect();
        names.sort();
        names
    }
}

/// Rebuilds one database from snapshot pages: into memory, or, in disk
/// mode, into the next generation's file.
pub(crate) enum Restorer {
    Memory(OrdMap<u32, Arc<[u8]>>),
    Disk(BaseFile),
}

impl Restorer {
    pub(crate) fn page(&mut self, pgno: u32, page: Vec<u8>) -> std::io::Result<()> {
        match self {
            Restorer::Memory(map) => {
                map.insert(pgno, Arc::from(page));
                Ok(())
            }
            Restorer::Disk(file) => file.write_page(pgno, &page),
        }
    }

    pub(crate) fn finish(
        self,
        (seq, id): (u64, u64),
        page_size: u32,
        pages: u32,
    ) -> std::io::Result<Version> {
        let (data, base) = match self {
            Restorer::Memory(map) => (map, None),
            Restorer::Disk(file) => {
                file.finish(pages, page_size)?;
                (OrdMap::new(), Some(Arc::new(file)))
            }
        };
        Ok(Version {
            seq,
            id,
            page_size,
            pages,
            data,
            base,
        })
    }
}
