//! The replicated SQLite store as a simulated node's state machine.
//!
//! Purpose: run what production replicates — SQLite over the store's VFS on
//! a real rusqlite `Connection`, commits handed to consensus at the commit
//! point, every node applying committed entries through
//! [`dqlite_store::StoreState`] — inside a [`crate::service::ServiceNode`],
//! on the simulated disk and network.
//!
//! How a client operation runs, as the server runs a statement on the
//! leader (`crates/server/src/gateway.rs`, `crates/node/src/store.rs`):
//!
//! 1. Only the leader takes it (a follower answers not-leader). A leader
//!    that has applied an entry of its term runs it at once and takes a
//!    read barrier (`Input::Read`) after it unless it committed an entry
//!    of its own; otherwise the barrier comes first.
//! 2. A read is one statement on a pooled connection (one per operation in
//!    flight, as each client has its own). A write is an interactive
//!    transaction (module `sql`): `BEGIN` and a read, then, 1–20 simulated ms
//!    later while others commit, the write computed from it and `COMMIT`.
//!    At the commit point the store calls [`Proposer::propose`], which here
//!    only queues the entry; the node hands the queue to the core in order
//!    right after the statement, and a refusal or a lost leadership reaches
//!    the store through the entry's `failed` callback, as
//!    `ServiceProposer` passes it on.
//! 3. [`dqlite_store::pending`] takes what a statement wrote or read on the
//!    speculative chain (a thread-local, so it is taken after every
//!    statement); the operation completes when every [`Pending`] it
//!    collected has an outcome: ok is success; stale, not-leader or a full
//!    disk certainly did not apply (refused); anything else is unknown.
//!
//! Each boot builds a new in-memory store: what survives a crash is what
//! consensus replays (its snapshots go through the store's own snapshot
//! format, `freeze` / `restore`). After every apply and restore the node
//! reports a digest of every database's image, so the checker compares
//! page images across nodes at every applied index. A digest of the whole
//! image is affordable because simulated databases stay a few pages small;
//! hashing only the pages an entry changes would miss a node that diverged
//! in a page no later entry touches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use dqlite_consensus::core::ProposeError as CoreProposeError;
use dqlite_consensus::core::{Core, Input, Outcome as CoreOutcome, Proposal};
use dqlite_store::{
    OnFailure, Pending, ProposeError as StoreProposeError, Proposer, SettleError, Store, StoreState,
};
use rusqlite::{Connection, ErrorCode};

mod sql;

use sql::Seen;

use crate::checker::linearizability::{Command, Outcome};
use crate::kv::KvRequest;
use crate::node::{Answer, ProposeError};
use crate::options::Workload;
use crate::raftrs::Broken;
use crate::service::{Events, Machine, Recording};

/// The one database clients use.
const DATABASE: &str = "sim.db";

/// SQLite extended result codes the store's VFS returns at a commit that
/// certainly did not apply (`dqlite_store::vfs::code`).
const IOERR_NOT_LEADER: i32 = 10 | (40 << 8);
const IOERR_STALE: i32 = 10 | (42 << 8);

/// Entries handed over at the commit point, waiting for the node to pass
/// them to its core.
type Queue = Arc<Mutex<VecDeque<(Vec<u8>, OnFailure)>>>;

/// The store's [`Proposer`]: queues, in commit order, and never waits.
struct QueueProposer(Queue);

impl Proposer for QueueProposer {
    fn propose(&self, entry: Vec<u8>, failed: OnFailure) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((entry, failed));
    }
}

/// One boot's store and what is in flight on it.
struct Open {
    store: Arc<Store>,
    /// Connections not in use. Each operation takes its own, as each
    /// client of a server has its own, so an interactive transaction can
    /// stay open while others commit.
    idle: Vec<Connection>,
    queue: Queue,
    /// Read barriers taken for client operations: id -> (operation, key,
    /// command).
    barriers: BTreeMap<u64, (u64, u64, Command)>,
    /// Entries handed to the core: id -> what to tell the store on failure.
    entries: BTreeMap<u64, OnFailure>,
    /// Writes between their read and their write, by operation.
    writes: BTreeMap<u64, Interactive>,
    /// Operations whose SQL ran, waiting for what they touched to settle.
    settling: Vec<(u64, Outcome, Pending)>,
    /// Operations that ran without a barrier and committed nothing of their
    /// own: they need a barrier after (handed to the core at the next poll).
    unconfirmed: Vec<(u64, Outcome, Pending)>,
    /// Those barriers, by id.
    confirming: BTreeMap<u64, (u64, Outcome, Pending)>,
}

/// A write in progress: a transaction that read, and writes what the
/// client computed from it a little later, as an interactive client does.
/// Another commit in between must make it fail (SQLITE_BUSY), or the write
/// would be a lost update.
struct Interactive {
    conn: Connection,
    key: i64,
    command: Command,
    seen: Seen,
    /// What the read touched.
    read: Pending,
    /// Ran without a barrier first: needs one after if it commits nothing.
    fast: bool,
}

/// The real store, driven by one of the three SQL workloads.
pub struct StoreMachine {
    workload: Workload,
    broken: dqlite_store::Broken,
    open: Option<Open>,
}

impl StoreMachine {
    /// A machine for `workload`, with the store canary `broken` planted
    /// (the consensus-only canaries leave the store correct).
    pub fn new(workload: Workload, broken: Broken) -> Self {
        let broken = match broken {
            Broken::AckBeforeCommit => dqlite_store::Broken::AckBeforeCommit,
            Broken::ApplyTwice => dqlite_store::Broken::ApplyTwice,
            Broken::SkipBaseCheck => dqlite_store::Broken::SkipBaseCheck,
            Broken::None | Broken::SendBeforeFsync | Broken::LongLease => {
                dqlite_store::Broken::None
            }
        };
        Self {
            workload,
            broken,
            open: None,
        }
    }
}

/// A digest of every non-empty database: name, then image bytes.
fn image_digest(store: &Store) -> u64 {
    let mut crc = 0u32;
    let mut len = 0u64;
    for name in store.databases() {
        let Some(image) = store.image(&name) else {
            continue;
        };
        if image.is_empty() {
            continue;
        }
        crc = crc32c::crc32c_append(crc, name.as_bytes());
        crc = crc32c::crc32c_append(crc, &image);
        len += image.len() as u64;
    }
    (len << 32) | u64::from(crc)
}

/// The store's view of a core refusal, as `ServiceProposer` maps it.
fn store_error(e: CoreProposeError) -> StoreProposeError {
    match e {
        CoreProposeError::NotLeader(_) | CoreProposeError::Dropped => StoreProposeError::NotLeader,
        CoreProposeError::LeadershipLost => StoreProposeError::LeadershipLost,
        CoreProposeError::ReadTimeout => StoreProposeError::Timeout,
        CoreProposeError::DiskFull(why) => StoreProposeError::DiskFull(why),
        other => StoreProposeError::Other(other.to_string()),
    }
}

/// What a client is told for a statement that did not settle.
fn settle_answer(e: &SettleError) -> Answer {
    match e {
        // Nothing was applied, on any node.
        SettleError::Stale | SettleError::NotLeader | SettleError::DiskFull => Answer::Refused,
        SettleError::LeadershipLost | SettleError::Other(_) => Answer::Unknown,
    }
}

/// What a client is told for a statement that failed: what the store
/// settled, if it did, else what the error code says for certain.
fn failed_answer(e: &rusqlite::Error, pending: Pending) -> Answer {
    match (pending.outcome(), e.sqlite_error()) {
        (Some(Err(settled)), _) => settle_answer(&settled),
        (_, Some(code))
            if code.extended_code == IOERR_NOT_LEADER
                || code.extended_code == IOERR_STALE
                || code.code == ErrorCode::DatabaseBusy =>
        {
            Answer::Refused
        }
        _ => Answer::Unknown,
    }
}

impl Open {
    fn take_conn(&mut self) -> rusqlite::Result<Connection> {
        match self.idle.pop() {
            Some(conn) => Ok(conn),
            None => self.store.open(DATABASE),
        }
    }

    /// Runs a read as one statement on a connection of the pool.
    fn read(&mut self, workload: Workload, key: u64) -> rusqlite::Result<Outcome> {
        let conn = self.take_conn()?;
        let result = sql::read(&conn, workload, key);
        self.put_back(conn, result.is_err());
        result
    }

    fn put_back(&mut self, conn: Connection, failed: bool) {
        if failed && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.idle.push(conn);
    }

    /// The first half of a write: open a transaction and read what the
    /// write depends on (creating the table first if needed).
    fn begin_write(
        &mut self,
        workload: Workload,
        key: u64,
        command: Command,
        fast: bool,
    ) -> rusqlite::Result<Interactive> {
        let conn = self.take_conn()?;
        let key = key as i64;
        match sql::begin(&conn, workload, key, command) {
            Ok(seen) => Ok(Interactive {
                conn,
                key,
                command,
                seen,
                read: dqlite_store::pending(),
                fast,
            }),
            Err(e) => {
                self.put_back(conn, true);
                Err(e)
            }
        }
    }
}

impl Open {
    /// Runs client operation `op_id`: a read at once, or a write's first
    /// half (its second comes back as a timer). `fast`: no barrier was
    /// taken first (the leader had applied an entry of its term).
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        workload: Workload,
        op_id: u64,
        key: u64,
        command: Command,
        fast: bool,
        answers: &mut Vec<(u64, Answer)>,
        timers: &mut Vec<(u64, u64)>,
    ) {
        // Anything left by an earlier boot or statement is not ours.
        drop(dqlite_store::pending());
        if command == Command::Read {
            let ran = self.read(workload, key);
            let pending = dqlite_store::pending();
            match ran {
                // Confirm leadership before answering what was read.
                Ok(outcome) if fast => self.unconfirmed.push((op_id, outcome, pending)),
                Ok(outcome) => self.settling.push((op_id, outcome, pending)),
                Err(e) => answers.push((op_id, failed_answer(&e, pending))),
            }
            return;
        }
        match self.begin_write(workload, key, command, fast) {
            Ok(write) => {
                self.writes.insert(op_id, write);
                // The client computes its write meanwhile; others may
                // commit.
                timers.push((1 + op_id % 20, op_id));
            }
            Err(e) => answers.push((op_id, failed_answer(&e, dqlite_store::pending()))),
        }
    }
}

impl Machine for StoreMachine {
    type State = StoreState;

    fn fresh(&mut self, events: &Events) -> Result<Recording<StoreState>, String> {
        let store = Store::memory().map_err(|e| e.to_string())?;
        store.set_broken(self.broken);
        let queue: Queue = Arc::default();
        store.set_proposer(Arc::new(QueueProposer(queue.clone())));
        let state = store.state();
        let digest_of = Arc::clone(&store);
        self.open = Some(Open {
            store,
            idle: Vec::new(),
            queue,
            barriers: BTreeMap::new(),
            entries: BTreeMap::new(),
            writes: BTreeMap::new(),
            settling: Vec::new(),
            unconfirmed: Vec::new(),
            confirming: BTreeMap::new(),
        });
        Ok(Recording::new(
            state,
            events.clone(),
            Some(Box::new(move || image_digest(&digest_of))),
        ))
    }

    fn request(
        &mut self,
        core: &Core<Recording<StoreState>>,
        id: u64,
        request: KvRequest,
        answers: &mut Vec<(u64, Answer)>,
        timers: &mut Vec<(u64, u64)>,
    ) -> Result<Option<Input>, ProposeError> {
        let open = self.open.as_mut().ok_or(ProposeError::NotLeader)?;
        if !core.is_leader() {
            return Err(ProposeError::NotLeader);
        }
        // As the server does: a leader that applied an entry of its term
        // holds every earlier one, so the statement runs at once (and
        // takes a barrier after, unless it commits an entry of its own);
        // otherwise a barrier comes first.
        if core.caught_up_in_term() {
            let (op_id, key, command) = (request.op_id, request.key, request.command);
            open.start(self.workload, op_id, key, command, true, answers, timers);
            return Ok(None);
        }
        open.barriers
            .insert(id, (request.op_id, request.key, request.command));
        Ok(Some(Input::Read(id)))
    }

    fn resolved(
        &mut self,
        id: u64,
        result: Result<CoreOutcome, CoreProposeError>,
        _answers: &mut Vec<(u64, Answer)>,
    ) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if let Some(failed) = open.entries.remove(&id) {
            // Success is seen when the entry is applied; only a failure is
            // passed on.
            if let Err(e) = result {
                failed(store_error(e));
            }
        }
    }

    fn read_done(
        &mut self,
        _core: &Core<Recording<StoreState>>,
        id: u64,
        result: Result<u64, CoreProposeError>,
        answers: &mut Vec<(u64, Answer)>,
        timers: &mut Vec<(u64, u64)>,
    ) {
        let workload = self.workload;
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if let Some((op_id, outcome, pendings)) = open.confirming.remove(&id) {
            match result {
                Ok(_) => open.settling.push((op_id, outcome, pendings)),
                // Leadership unconfirmed: the client gets an error, and the
                // operation changed nothing.
                Err(_) => answers.push((op_id, Answer::Refused)),
            }
            return;
        }
        let Some((op_id, key, command)) = open.barriers.remove(&id) else {
            return;
        };
        if result.is_err() {
            // The statement never ran.
            answers.push((op_id, Answer::Refused));
            return;
        }
        open.start(workload, op_id, key, command, false, answers, timers);
    }

    fn wake(
        &mut self,
        core: &Core<Recording<StoreState>>,
        token: u64,
        answers: &mut Vec<(u64, Answer)>,
    ) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(write) = open.writes.remove(&token) else {
            return;
        };
        let op_id = token;
        if !core.is_leader() {
            // The server refuses the statement before it runs; the open
            // transaction is rolled back and nothing was written.
            open.put_back(write.conn, true);
            answers.push((op_id, Answer::Refused));
            return;
        }
        drop(dqlite_store::pending());
        let written = sql::finish(&write.conn, write.key, write.command, &write.seen);
        let pending = dqlite_store::pending();
        let Interactive {
            conn, read, fast, ..
        } = write;
        open.put_back(conn, written.is_err());
        match written {
            // A commit of its own proves the leadership it read under.
            Ok(outcome) if fast && !pending.wrote() => open.unconfirmed.push((op_id, outcome, {
                let mut all = read;
                all.append(pending);
                all
            })),
            Ok(outcome) => open.settling.push((op_id, outcome, {
                let mut all = read;
                all.append(pending);
                all
            })),
            Err(e) => answers.push((op_id, failed_answer(&e, pending))),
        }
    }

    fn poll(&mut self, next_id: &mut u64, answers: &mut Vec<(u64, Answer)>) -> Vec<Input> {
        let Some(open) = self.open.as_mut() else {
            return Vec::new();
        };
        let mut inputs = Vec::new();
        let handed: Vec<_> = open
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for (entry, failed) in handed {
            let id = *next_id;
            *next_id += 1;
            open.entries.insert(id, failed);
            inputs.push(Input::Propose(id, Proposal::State(entry)));
        }
        for unconfirmed in std::mem::take(&mut open.unconfirmed) {
            let id = *next_id;
            *next_id += 1;
            open.confirming.insert(id, unconfirmed);
            inputs.push(Input::Read(id));
        }
        open.settling
            .retain(|(op_id, outcome, pendings)| match pendings.outcome() {
                None => true,
                Some(Ok(())) => {
                    answers.push((*op_id, Answer::Done(*outcome)));
                    false
                }
                Some(Err(e)) => {
                    answers.push((*op_id, settle_answer(&e)));
                    false
                }
            });
        inputs
    }

    fn final_read(&mut self, core: &Core<Recording<StoreState>>) -> Option<(u64, Vec<u64>)> {
        if self.workload == Workload::Register {
            return None;
        }
        let applied = core.applied_index();
        let open = self.open.as_mut()?;
        // A connection of its own: a pooled one's page cache could hide
        // what was applied under it.
        let conn = open.store.open(DATABASE).ok()?;
        drop(dqlite_store::pending());
        let read = sql::final_read(&conn, self.workload);
        drop(dqlite_store::pending());
        read.ok().map(|values| (applied, values))
    }
}
