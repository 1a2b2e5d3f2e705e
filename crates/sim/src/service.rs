//! A simulated node running the consensus crate's real core.
//!
//! Purpose: drive `dqlite_consensus::core::Core` — raft-rs wrapped with the
//! crate's proposals, read barriers, membership, snapshots and compaction —
//! over its real on-disk log, hard-state file and snapshot store, all on a
//! [`SimDisk`] through [`SimFs`]. This adapter plays the parts the driver,
//! the persistence thread and the HTTP transport play in production:
//!
//! - `Action::Persist`: the batch is written at once (unsynced) and an fsync
//!   is scheduled a few simulated milliseconds later; only then is
//!   `Input::Persisted` fed back, so a crash in between loses or tears it.
//!   Several batches share one fsync, as with the real group commit.
//! - `Action::Send` of a `MsgSnapshot`: the snapshot file is read from this
//!   node's disk and travels with the message; the receiver writes it through
//!   `SnapshotStore::incoming` and answers with an acknowledgement that the
//!   sender turns into `Input::SnapshotSent`.
//! - Clients and the state machine are a [`Machine`]: [`KvMachine`] here
//!   (writes and compare-and-sets are proposals of the crate's `KvCommand`;
//!   reads are `Input::Read` barriers followed by a local read), or
//!   [`crate::store::StoreMachine`], the real replicated SQLite store.
//!
//! Persisting a batch calls the persistence thread's own `stage_batch`, so
//! the rules (what rewrites the meta file, what resets the log) are the
//! production ones.

use std::collections::BTreeMap;
use std::io::{self, Read as _};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_consensus::boot;
use dqlite_consensus::core::{
    Action, Broken as CoreBroken, Core, CoreConfig, Input, MemberRequest, Outcome as CoreOutcome,
    PersistBatch, Proposal, ProposeError as CoreProposeError,
};
use dqlite_consensus::kv::{KvCommand, KvState};
use dqlite_consensus::lease::{self, Clock};
use dqlite_consensus::membership::{NodeInfo, Role};
use dqlite_consensus::persist::stage_batch;
use dqlite_consensus::storage::{Log, LogOptions, MetaFile, StorageError};
use dqlite_consensus::{Image, State};
use raft::eraftpb::{Entry, Message, MessageType};

use crate::checker::invariants::{EntryView, NodeView};
use crate::checker::linearizability::{Command, Outcome};
use crate::disk::{CrashMode, DiskConfig, SimDisk};
use crate::kv::KvRequest;
use crate::net::NodeId;
use crate::node::{Answer, Applied, Effects, MemberChange, ProposeError, SimNode};
use crate::raftrs::{entry_digest, Broken, ELECTION_TICKS, HEARTBEAT_TICKS};
use crate::rng::SimRng;
use crate::simfs::SimFs;
use crate::trace::digest;

/// A message between simulated consensus nodes.
#[derive(Debug, Clone)]
pub enum Wire {
    /// A raft message; a `MsgSnapshot` carries the snapshot file.
    Raft(Box<Message>, Option<Arc<Vec<u8>>>),
    /// The receiver's answer to a streamed snapshot.
    SnapshotAck {
        /// The receiver.
        from: NodeId,
        /// The sender of the snapshot.
        to: NodeId,
        /// Whether it was stored.
        ok: bool,
    },
}

/// Timer token: run the pending fsync.
const TOKEN_FSYNC: u64 = 0;
/// Timer token base: a snapshot to peer `token - TOKEN_SNAPSHOT` timed out.
const TOKEN_SNAPSHOT: u64 = 1 << 32;
/// Timer token base: the machine's own timers (below the snapshot written
/// token).
const TOKEN_MACHINE: u64 = 1 << 48;
/// Timer token: the snapshot being written in the background is done.
const TOKEN_SNAPSHOT_WRITTEN: u64 = u64::MAX;
/// Longest simulated time a snapshot takes to write: applies, appends and
/// elections go on meanwhile, as on the driver's background thread.
const SNAPSHOT_WRITE_MS_MAX: u64 = 400;
/// How long a snapshot stream may take before it counts as failed.
const SNAPSHOT_TIMEOUT_MS: u64 = 1_000;
/// Retry delay after a failed write or fsync.
const RETRY_MS: u64 = 20;
/// Segment size: small, so runs cross segment boundaries often.
const SEGMENT_BYTES: u64 = 16 << 10;

/// Where a node's state machine reports what it applied.
pub type Events = Arc<Mutex<Vec<Applied>>>;

/// A digest of the state machine's whole image (every database), taken
/// after each apply and restore.
pub type ImageDigest = Box<dyn Fn() -> u64 + Send>;

/// Wraps a state machine to record what it applies (state-machine safety)
/// and, if it has an image, a digest of it at every applied index (image
/// identity across nodes).
pub struct Recording<S> {
    /// The real state machine.
    pub inner: S,
    events: Events,
    image: Option<ImageDigest>,
}

impl<S> Recording<S> {
    /// Records into `events`; `image` digests the state after each change.
    pub fn new(inner: S, events: Events, image: Option<ImageDigest>) -> Self {
        Self {
            inner,
            events,
            image,
        }
    }

    fn push(&self, event: Applied) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    fn push_image(&self, index: u64) {
        if let Some(image) = &self.image {
            self.push(Applied::Image {
                index,
                digest: image(),
            });
        }
    }
}

impl<S: State> State for Recording<S> {
    fn apply(&mut self, index: u64, instruction: &[u8]) -> io::Result<bool> {
        let satisfied = self.inner.apply(index, instruction)?;
        self.push(Applied::Entry {
            index,
            digest: digest(instruction),
        });
        self.push_image(index);
        Ok(satisfied)
    }

    fn skip(&mut self, index: u64) {
        self.push(Applied::Entry {
            index,
            digest: digest(b"<skip>"),
        });
        self.inner.skip(index)
    }

    fn freeze(&self) -> io::Result<Box<dyn Image>> {
        self.inner.freeze()
    }

    fn restore(&mut self, index: u64, input: &mut dyn io::Read) -> io::Result<()> {
        self.push(Applied::Restored { index });
        self.inner.restore(index, input)?;
        self.push_image(index);
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }
}

/// What a [`ServiceNode`] runs: its state machine, and how client requests
/// become core inputs and answers. Answers go to `answers` as
/// `(operation id, answer)`.
pub trait Machine: 'static {
    /// The consensus state machine, wrapped to record what it applies.
    type State: State;

    /// A fresh state machine for a boot (and for the bootstrap snapshot),
    /// recording into `events`. Whatever the previous one held is gone.
    fn fresh(&mut self, events: &Events) -> Result<Recording<Self::State>, String>;

    /// A client request arrived: the input to hand the core (a proposal or
    /// a read barrier, under `id`), none if the machine handled it itself,
    /// or a refusal. Timers as for [`Machine::read_done`].
    fn request(
        &mut self,
        core: &Core<Recording<Self::State>>,
        id: u64,
        request: KvRequest,
        answers: &mut Vec<(u64, Answer)>,
        timers: &mut Vec<(u64, u64)>,
    ) -> Result<Option<Input>, ProposeError>;

    /// Proposal `id` finished.
    fn resolved(
        &mut self,
        id: u64,
        result: Result<CoreOutcome, CoreProposeError>,
        answers: &mut Vec<(u64, Answer)>,
    );

    /// Read barrier `id` finished. The machine may set timers (delay in
    /// ms, token) that come back through [`Machine::wake`].
    fn read_done(
        &mut self,
        core: &Core<Recording<Self::State>>,
        id: u64,
        result: Result<u64, CoreProposeError>,
        answers: &mut Vec<(u64, Answer)>,
        timers: &mut Vec<(u64, u64)>,
    );

    /// A timer the machine set fired (not after a crash).
    fn wake(
        &mut self,
        core: &Core<Recording<Self::State>>,
        token: u64,
        answers: &mut Vec<(u64, Answer)>,
    ) {
        let _ = (core, token, answers);
    }

    /// After every core input: proposals to hand the core next, in order
    /// (ids from `next_id`), and answers that became known meanwhile.
    fn poll(&mut self, next_id: &mut u64, answers: &mut Vec<(u64, Answer)>) -> Vec<Input> {
        let _ = (next_id, answers);
        Vec::new()
    }

    /// The final read of a set or bank run ([`SimNode::final_read`]).
    fn final_read(&mut self, core: &Core<Recording<Self::State>>) -> Option<(u64, Vec<u64>)> {
        let _ = core;
        None
    }
}

/// The consensus crate's key-value state machine, driven by the clients'
/// register operations.
pub struct KvMachine {
    broken: Broken,
    requests: BTreeMap<u64, KvPending>,
}

impl KvMachine {
    /// With `broken` planted (only `AckBeforeCommit` concerns it).
    pub fn new(broken: Broken) -> Self {
        Self {
            broken,
            requests: BTreeMap::new(),
        }
    }
}

enum KvPending {
    Write(u64, Command),
    Read(u64, u64),
}

impl Machine for KvMachine {
    type State = KvState;

    fn fresh(&mut self, events: &Events) -> Result<Recording<KvState>, String> {
        self.requests.clear();
        Ok(Recording::new(KvState::new(), events.clone(), None))
    }

    fn request(
        &mut self,
        core: &Core<Recording<KvState>>,
        id: u64,
        request: KvRequest,
        answers: &mut Vec<(u64, Answer)>,
        _timers: &mut Vec<(u64, u64)>,
    ) -> Result<Option<Input>, ProposeError> {
        let key = key_name(request.key);
        let (input, pending) = match request.command {
            Command::Read => (Input::Read(id), KvPending::Read(request.op_id, request.key)),
            Command::Write(v) => (
                Input::Propose(
                    id,
                    Proposal::State(
                        KvCommand::Set {
                            key,
                            value: v.to_string(),
                        }
                        .encode(),
                    ),
                ),
                KvPending::Write(request.op_id, request.command),
            ),
            Command::Cas { expected, new } => (
                Input::Propose(
                    id,
                    Proposal::State(
                        KvCommand::Cas {
                            key,
                            expected: expected.map(|v| v.to_string()),
                            value: Some(new.to_string()),
                        }
                        .encode(),
                    ),
                ),
                KvPending::Write(request.op_id, request.command),
            ),
        };
        if !matches!(request.command, Command::Read) && !core.is_leader() {
            return Err(ProposeError::NotLeader);
        }
        if self.broken == Broken::AckBeforeCommit && matches!(request.command, Command::Write(_)) {
            answers.push((request.op_id, Answer::Done(Outcome::Written)));
        } else {
            self.requests.insert(id, pending);
        }
        Ok(Some(input))
    }

    fn resolved(
        &mut self,
        id: u64,
        result: Result<CoreOutcome, CoreProposeError>,
        answers: &mut Vec<(u64, Answer)>,
    ) {
        let Some(KvPending::Write(op_id, command)) = self.requests.remove(&id) else {
            return;
        };
        let answer = match result {
            Ok(outcome) => Answer::Done(match command {
                Command::Cas { .. } => Outcome::Cas(outcome.satisfied),
                _ => Outcome::Written,
            }),
            Err(e) => refused_or_unknown(&e),
        };
        answers.push((op_id, answer));
    }

    fn read_done(
        &mut self,
        core: &Core<Recording<KvState>>,
        id: u64,
        result: Result<u64, CoreProposeError>,
        answers: &mut Vec<(u64, Answer)>,
        _timers: &mut Vec<(u64, u64)>,
    ) {
        let Some(KvPending::Read(op_id, key)) = self.requests.remove(&id) else {
            return;
        };
        let answer = match result {
            Ok(_) => Answer::Done(Outcome::Read(
                core.state()
                    .inner
                    .get(&key_name(key))
                    .and_then(|v| v.parse().ok()),
            )),
            // A read that did not complete has no effect.
            Err(_) => Answer::Refused,
        };
        answers.push((op_id, answer));
    }
}

/// The log as the checker sees it: raft's in-memory log, mirrored from the
/// batches the core hands out.
#[derive(Debug, Default)]
struct Mirror {
    first_index: u64,
    entries: Vec<EntryView>,
}

impl Mirror {
    fn reset(&mut self, snapshot_index: u64) {
        self.first_index = snapshot_index + 1;
        self.entries.clear();
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let keep = first.index.saturating_sub(self.first_index) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().map(|e| EntryView {
            term: e.term,
            digest: entry_digest(e),
        }));
    }

    fn compact(&mut self, index: u64) {
        if index >= self.first_index {
            let drop = ((index + 1 - self.first_index) as usize).min(self.entries.len());
            self.entries.drain(..drop);
            self.first_index += drop as u64;
        }
    }
}

struct Running<S: State> {
    core: Core<Recording<S>>,
    log: Log,
    meta: MetaFile,
    /// Batches written (or to rewrite) but not yet fsynced.
    unsynced: Vec<PersistBatch>,
    write_failed: bool,
    fsync_scheduled: bool,
    compact_to: Option<u64>,
    /// The outcome of the snapshot being "written", delivered at its timer.
    snapshot_written: Option<Input>,
    next_request: u64,
}

/// How a [`ServiceNode`] runs, apart from its machine.
pub struct Setup {
    /// A bug planted in the adapter (`SendBeforeFsync`) or the lease
    /// (`LongLease`); others are the machine's.
    pub broken: Broken,
    /// Largest simulated fsync latency.
    pub fsync_ms_max: u64,
    /// The node's skewed clock.
    pub clock: Clock,
    /// Read leases on.
    pub read_lease: bool,
}

impl Setup {
    /// The core's lease: bounded by the simulator's clock skew (ticks of 8
    /// to 12 ms: rates differ by up to 1.5), or three election timeouts
    /// for the `LongLease` canary.
    fn lease_span(&self) -> Option<Duration> {
        let tick = Duration::from_millis(crate::cluster::TICK_MS);
        match (self.read_lease, self.broken) {
            (false, _) => None,
            (true, Broken::LongLease) => Some(tick * 3 * ELECTION_TICKS as u32),
            (true, _) => Some(lease::span(tick, ELECTION_TICKS, 1.5)),
        }
    }
}

/// A consensus-core node on a simulated disk, running machine `M`.
pub struct ServiceNode<M: Machine> {
    id: NodeId,
    machine: M,
    fs: SimFs,
    raft_dir: PathBuf,
    broken: Broken,
    clock: Clock,
    read_lease: Option<Duration>,
    events: Events,
    running: Option<Running<M::State>>,
    mirror: Mirror,
    /// Last known term (for the view while down).
    term: u64,
    /// Bootstrap node: campaign at the first tick.
    campaign_pending: bool,
    /// Largest simulated fsync latency.
    fsync_ms_max: u64,
}

fn storage_err(e: StorageError) -> String {
    e.to_string()
}

impl<M: Machine> ServiceNode<M> {
    /// A node: `voters == [id]` bootstraps a one-node cluster, an empty
    /// `voters` is a joiner waiting to be added by the leader.
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        mut machine: M,
        setup: Setup,
        rng: &mut SimRng,
    ) -> Result<Self, String> {
        let disk = SimDisk::new(DiskConfig::default(), rng.fork());
        // Half the nodes append with direct writes, as on a real disk;
        // the others as on tmpfs.
        let fs = SimFs::new(disk).with_direct(id % 2 == 1);
        let raft_dir = PathBuf::from("raft");
        let shared: Arc<dyn dqlite_consensus::storage::Disk> = Arc::new(fs.clone());
        let events: Events = Arc::new(Mutex::new(Vec::new()));
        if voters == [id] {
            let empty = machine.fresh(&events)?;
            boot::bootstrap(shared, &raft_dir, id, &format!("n{id}"), &empty)
                .map_err(storage_err)?;
        } else if voters.is_empty() {
            boot::write_identity(shared.as_ref(), &raft_dir, id, 0).map_err(storage_err)?;
        } else {
            return Err("consensus nodes start alone or as joiners".into());
        }
        let mut node = Self {
            id,
            machine,
            fs,
            raft_dir,
            broken: setup.broken,
            read_lease: setup.lease_span(),
            clock: setup.clock,
            events,
            running: None,
            mirror: Mirror::default(),
            term: 0,
            campaign_pending: false,
            fsync_ms_max: setup.fsync_ms_max.max(1),
        };
        node.boot(rng, &mut Effects::default())?;
        // Campaign on the first tick, where the harness collects the effects.
        node.campaign_pending = voters == [id];
        Ok(node)
    }

    fn boot(&mut self, rng: &mut SimRng, fx: &mut Effects<Wire>) -> Result<u64, String> {
        let shared: Arc<dyn dqlite_consensus::storage::Disk> = Arc::new(self.fs.clone());
        let options = LogOptions {
            segment_size: SEGMENT_BYTES,
            auto_recovery: false,
        };
        // A tiny load budget, so restarts leave committed entries on disk
        // and apply them through the read-back path.
        let opened = boot::open_bounded(shared.clone(), &self.raft_dir, options, 256, 0)
            .map_err(storage_err)?;
        let snapshot_index = opened.boot.snapshot.as_ref().map_or(0, |s| s.index);
        self.mirror.reset(snapshot_index);
        let dropped = opened.boot.dropped_terms.len() as u64;
        if dropped > 0 {
            // The checker's mirror holds every entry: read those back.
            let reader = dqlite_consensus::storage::LogReader::new(shared, &self.raft_dir);
            let low = snapshot_index + 1;
            let back = reader
                .read(low, low + dropped, u64::MAX)
                .map_err(storage_err)?;
            self.mirror.append(&back);
        }
        self.mirror.append(&opened.boot.entries);
        let config = CoreConfig {
            // Small thresholds so snapshots, compaction and snapshot
            // transfer happen within a short run.
            snapshot_threshold: 24,
            snapshot_trailing: 8,
            snapshot_waits_for_image_bytes: false,
            // A tiny cache so lagging followers are served from the
            // segment files (the read-back path) in most runs.
            log_cache_bytes: 256,
            max_size_per_msg: 4 << 10,
            max_inflight_msgs: 16,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            read_lease: self.read_lease,
            clock: self.clock.clone(),
            broken: match self.broken {
                Broken::LongLease => CoreBroken::LeaseOutlivesLeadership,
                _ => CoreBroken::None,
            },
            ..CoreConfig::new(self.id)
        };
        let state = self.machine.fresh(&self.events)?;
        let mut core =
            Core::new(config, state, opened.snapshots, opened.boot).map_err(|e| e.to_string())?;
        let mut election = rng.fork();
        core.set_election_timeout_rng(Box::new(move |min, max| {
            election.between(min as u64, max.saturating_sub(1) as u64) as usize
        }));
        let applied = core.applied_index();
        self.term = core.term();
        self.running = Some(Running {
            core,
            log: opened.log,
            meta: opened.meta,
            unsynced: Vec::new(),
            write_failed: false,
            fsync_scheduled: false,
            compact_to: None,
            snapshot_written: None,
            next_request: 1,
        });
        self.drain_applied(fx);
        Ok(applied)
    }

    fn drain_applied(&mut self, fx: &mut Effects<Wire>) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        fx.applied.append(&mut events);
    }

    fn input(&mut self, input: Input, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        running.core.handle(input, &mut actions);
        self.term = running.core.term();
        self.actions(actions, rng, fx);
        self.drain_applied(fx);
        self.poll_machine(rng, fx);
    }

    /// Hands the core what the machine has for it, and collects answers.
    fn poll_machine(&mut self, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let next = self
            .machine
            .poll(&mut running.next_request, &mut fx.answers);
        for input in next {
            self.input(input, rng, fx);
        }
    }

    fn actions(&mut self, actions: Vec<Action>, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        let mut follow_up = Vec::new();
        for action in actions {
            let Some(running) = self.running.as_mut() else {
                return;
            };
            match action {
                Action::Send(m) => {
                    let to = m.to;
                    let mut snapshot = None;
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        let meta = m.get_snapshot().get_metadata();
                        match read_snapshot(&running.core, meta.term, meta.index) {
                            Ok(bytes) => snapshot = Some(Arc::new(bytes)),
                            Err(_) => {
                                follow_up.push(Input::SnapshotSent { to, ok: false });
                                continue;
                            }
                        }
                        fx.timers.push((SNAPSHOT_TIMEOUT_MS, TOKEN_SNAPSHOT + to));
                    }
                    fx.messages.push((to, Wire::Raft(Box::new(m), snapshot)));
                }
                Action::Persist(batch) => {
                    if let Some(index) = batch.snapshot_index {
                        self.mirror.reset(index);
                    }
                    self.mirror.append(&batch.entries);
                    if !running.write_failed {
                        running.write_failed = write_batch(self.id, running, &batch).is_err();
                    }
                    let number = batch.number;
                    running.unsynced.push(batch);
                    if self.broken == Broken::SendBeforeFsync {
                        // The bug: report durability before the fsync.
                        follow_up.push(Input::Persisted(number));
                    }
                    if !running.fsync_scheduled {
                        running.fsync_scheduled = true;
                        fx.timers
                            .push((rng.between(1, self.fsync_ms_max), TOKEN_FSYNC));
                    }
                }
                Action::Compact(index) => {
                    self.mirror.compact(index);
                    running.compact_to = Some(index);
                }
                Action::Snapshot(job) => {
                    // Written at once (the image is frozen), reported later.
                    let store = running.core.snapshots().clone();
                    let result = job
                        .write(&store, &AtomicBool::new(false))
                        .map_err(storage_err);
                    running.snapshot_written = Some(Input::SnapshotWritten {
                        result,
                        took: Duration::ZERO,
                    });
                    fx.timers.push((
                        rng.between(1, SNAPSHOT_WRITE_MS_MAX),
                        TOKEN_SNAPSHOT_WRITTEN,
                    ));
                }
                Action::Resolve(id, result) => {
                    self.machine.resolved(id, result, &mut fx.answers);
                }
                Action::ReadDone(id, result) => {
                    let mut timers = Vec::new();
                    self.machine
                        .read_done(&running.core, id, result, &mut fx.answers, &mut timers);
                    fx.timers.extend(
                        timers
                            .into_iter()
                            .map(|(delay, token)| (delay, TOKEN_MACHINE + token)),
                    );
                }
                Action::LeaderChanged { .. } | Action::MembershipChanged | Action::Removed => {}
            }
        }
        for input in follow_up {
            self.input(input, rng, fx);
        }
    }

    fn fsync(&mut self, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        running.fsync_scheduled = false;
        let mut ok = true;
        if running.write_failed {
            // Rewrite everything not yet durable, as the persistence thread does.
            let batches = std::mem::take(&mut running.unsynced);
            ok = batches
                .iter()
                .all(|b| write_batch(self.id, running, b).is_ok());
            running.unsynced = batches;
            running.write_failed = !ok;
        }
        ok = ok && running.log.sync().is_ok() && running.meta.sync().is_ok();
        if !ok {
            running.write_failed = true;
            running.fsync_scheduled = true;
            fx.timers.push((RETRY_MS, TOKEN_FSYNC));
            return;
        }
        let number = running.unsynced.iter().map(|b| b.number).max();
        running.unsynced.clear();
        if let Some(index) = running.compact_to.take() {
            // Compaction failing only leaves old segments behind.
            let _ = running.log.compact(index);
        }
        if let Some(number) = number {
            if self.broken != Broken::SendBeforeFsync {
                self.input(Input::Persisted(number), rng, fx);
            }
        }
    }

    fn receive_snapshot(&mut self, message: &Message, bytes: &[u8]) -> bool {
        let Some(running) = self.running.as_ref() else {
            return false;
        };
        let meta = message.get_snapshot().get_metadata();
        let stored = running
            .core
            .snapshots()
            .incoming(meta.term, meta.index)
            .and_then(|mut incoming| {
                incoming.write_chunk(bytes)?;
                incoming.finish()
            });
        stored.is_ok()
    }
}

fn key_name(key: u64) -> String {
    format!("k{key}")
}

fn refused_or_unknown(e: &CoreProposeError) -> Answer {
    match e {
        CoreProposeError::NotLeader(_)
        | CoreProposeError::Dropped
        | CoreProposeError::ConfChangeInProgress
        | CoreProposeError::InvalidChange(_) => Answer::Refused,
        _ => Answer::Unknown,
    }
}

fn read_snapshot<S: State>(
    core: &Core<Recording<S>>,
    term: u64,
    index: u64,
) -> Result<Vec<u8>, String> {
    let store = core.snapshots();
    let info = store.find(term, index).map_err(storage_err)?;
    let mut reader = store.raw_reader(&info).map_err(storage_err)?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Write one batch without syncing, with the persistence thread's own rules.
fn write_batch<S: State>(
    id: NodeId,
    running: &mut Running<S>,
    batch: &PersistBatch,
) -> Result<(), String> {
    stage_batch(&mut running.log, &mut running.meta, id, batch)
        .map(|_| ())
        .map_err(storage_err)
}

impl<M: Machine> SimNode for ServiceNode<M> {
    type Message = Wire;

    fn tick(&mut self, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        if std::mem::take(&mut self.campaign_pending) {
            self.input(Input::Campaign, rng, fx);
        }
        self.input(Input::Tick, rng, fx);
    }

    fn receive(&mut self, message: Wire, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        match message {
            Wire::Raft(m, snapshot) => {
                if let Some(bytes) = snapshot {
                    let ok = self.receive_snapshot(&m, &bytes);
                    fx.messages.push((
                        m.from,
                        Wire::SnapshotAck {
                            from: self.id,
                            to: m.from,
                            ok,
                        },
                    ));
                    if !ok {
                        return;
                    }
                }
                self.input(Input::Step(*m), rng, fx);
            }
            Wire::SnapshotAck { from, ok, .. } => {
                self.input(Input::SnapshotSent { to: from, ok }, rng, fx);
            }
        }
    }

    fn wake(&mut self, token: u64, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        if token == TOKEN_FSYNC {
            self.fsync(rng, fx);
        } else if token == TOKEN_SNAPSHOT_WRITTEN {
            // A crash meanwhile lost it, as a real crash loses the thread.
            let done = self
                .running
                .as_mut()
                .and_then(|r| r.snapshot_written.take());
            if let Some(input) = done {
                self.input(input, rng, fx);
            }
        } else if let Some(token) = token.checked_sub(TOKEN_MACHINE) {
            if let Some(running) = self.running.as_ref() {
                self.machine.wake(&running.core, token, &mut fx.answers);
            }
            self.poll_machine(rng, fx);
        } else if let Some(to) = token.checked_sub(TOKEN_SNAPSHOT) {
            // Reporting a failure for a stream that succeeded is harmless:
            // raft ignores it unless the peer still waits for a snapshot.
            self.input(Input::SnapshotSent { to, ok: false }, rng, fx);
        }
    }

    fn propose(
        &mut self,
        request: KvRequest,
        rng: &mut SimRng,
        fx: &mut Effects<Wire>,
    ) -> Result<(), ProposeError> {
        let running = self.running.as_mut().ok_or(ProposeError::NotLeader)?;
        let id = running.next_request;
        running.next_request += 1;
        let mut inner = Effects::default();
        let mut timers = Vec::new();
        let input =
            self.machine
                .request(&running.core, id, request, &mut inner.answers, &mut timers)?;
        inner.timers.extend(
            timers
                .into_iter()
                .map(|(delay, token)| (delay, TOKEN_MACHINE + token)),
        );
        match input {
            Some(input) => self.input(input, rng, &mut inner),
            None => self.poll_machine(rng, &mut inner),
        }
        // A refusal inside the same input means it never entered the log.
        if let Some(position) = inner
            .answers
            .iter()
            .position(|&(op, a)| op == request.op_id && a == Answer::Refused)
        {
            inner.answers.remove(position);
            merge(fx, inner);
            return Err(ProposeError::NotLeader);
        }
        merge(fx, inner);
        Ok(())
    }

    fn transfer_leadership(&mut self, to: NodeId, rng: &mut SimRng, fx: &mut Effects<Wire>) {
        self.input(Input::TransferLeader(to), rng, fx);
    }

    fn change_membership(
        &mut self,
        change: MemberChange,
        rng: &mut SimRng,
        fx: &mut Effects<Wire>,
    ) -> Result<(), ProposeError> {
        let running = self.running.as_mut().ok_or(ProposeError::NotLeader)?;
        if !running.core.is_leader() {
            return Err(ProposeError::NotLeader);
        }
        let id = running.next_request;
        running.next_request += 1;
        let request = match change {
            // Joins as a standby; the leader promotes it once caught up.
            MemberChange::Add(node) => {
                MemberRequest::Learner(NodeInfo::new(node, format!("n{node}"), Role::StandBy))
            }
            MemberChange::Remove(node) => MemberRequest::Remove(node),
        };
        self.input(Input::Propose(id, Proposal::Member(request)), rng, fx);
        Ok(())
    }

    fn members(&self) -> Vec<NodeId> {
        let Some(running) = self.running.as_ref() else {
            return Vec::new();
        };
        let cs = running.core.conf_state();
        let mut ids: Vec<NodeId> = cs
            .voters
            .iter()
            .chain(cs.learners.iter())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn removed(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.core.is_removed())
    }

    fn view(&self) -> NodeView<'_> {
        let (term, is_leader, commit) = match &self.running {
            Some(r) => (r.core.term(), r.core.is_leader(), r.core.commit_index()),
            None => (self.term, false, 0),
        };
        NodeView {
            id: self.id,
            term,
            is_leader,
            commit,
            first_index: self.mirror.first_index,
            entries: &self.mirror.entries,
        }
    }

    fn crash(&mut self, mode: CrashMode) {
        self.running = None;
        self.fs.disk().crash(mode);
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn restart(&mut self, rng: &mut SimRng, fx: &mut Effects<Wire>) -> Result<u64, String> {
        // Events from the boot (a snapshot restore) precede the index we return.
        let applied = self.boot(rng, &mut Effects::default())?;
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.input(Input::Tick, rng, fx);
        Ok(applied)
    }

    fn final_read(&mut self) -> Option<(u64, Vec<u64>)> {
        let running = self.running.as_ref()?;
        self.machine.final_read(&running.core)
    }

    fn describe(message: &Wire) -> String {
        match message {
            Wire::Raft(m, snapshot) => format!(
                "{}{}",
                crate::trace::describe_raft(m),
                if snapshot.is_some() { " +snapshot" } else { "" }
            ),
            Wire::SnapshotAck { from, to, ok } => format!("SnapshotAck {from}->{to} ok={ok}"),
        }
    }
}

fn merge(fx: &mut Effects<Wire>, inner: Effects<Wire>) {
    fx.messages.extend(inner.messages);
    fx.applied.extend(inner.applied);
    fx.answers.extend(inner.answers);
    fx.timers.extend(inner.timers);
}
