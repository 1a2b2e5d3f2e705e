//! The pure, synchronous core of the service: it owns raft-rs's `RawNode`,
//! the application [`State`] and the cluster registry, takes [`Input`]s and
//! produces [`Action`]s. It has no network and no threads, and reads a
//! clock only for read leases ([`crate::lease`], given in its config); the only
//! I/O it does itself is reading and writing snapshot files through the
//! [`crate::storage::Disk`] seam. The real driver and the simulator both run this code.
//!
//! The Ready contract is followed in one place, [`Core::process_ready`]:
//! send `messages` (a leader may replicate before its own append is durable,
//! raft thesis 10.2.1); install a snapshot; apply committed entries; hand
//! entries and hard state to the persistence side ([`Action::Persist`]);
//! `advance_append_async`. Persisted messages (votes, append responses) are
//! released only when [`Input::Persisted`] reports the fsync, so no message
//! that depends on a write ever leaves before the write is durable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState, Message, MessageType, SnapshotMetadata,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use tracing::{debug, info, warn};

use crate::codec::{self, Payload};
use crate::lease::{Clock, Lease, Stamp};
use crate::membership::{ClusterMeta, MemberChange, NodeInfo, Role, ServiceCommand};
use crate::prepare::PreparedSlot;
use crate::progress::{Progress, ProgressReader};
use crate::state::{Image, State};
use crate::storage::snapshot::{ConfStateCopy, SnapshotHeader, SnapshotInfo, SnapshotStore};
use crate::storage::{Fence, RaftLogView, StorageError};

/// Identifies a caller's proposal (chosen by the caller, unique per core).
pub type ProposalId = u64;
/// Identifies a caller's read barrier.
pub type ReadId = u64;

/// Proposal ids at or above this are the core's own (promotions).
const INTERNAL_PROPOSAL: ProposalId = u64::MAX / 2;

/// Static settings of a core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's raft id.
    pub id: u64,
    /// Ticks without a leader before an election.
    pub election_tick: usize,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Take a snapshot after this many applied entries.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub snapshot_trailing: u64,
    /// A snapshot also waits for as many bytes of applied entries as the
    /// last snapshot file holds ([`Core::maybe_snapshot`]). The simulator
    /// turns it off to take snapshots often.
    pub snapshot_waits_for_image_bytes: bool,
    /// Bytes of log entries kept in memory; older applied entries are read
    /// back from the segment files when a follower needs them.
    pub log_cache_bytes: u64,
    /// Upper bound on one append message's size.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// A peer the leader has heard from within this many ticks counts as
    /// online (role manager, quorum guard, transfer target choice).
    pub online_ticks: u64,
    /// How long a quorum's acknowledgement of a read round lets the
    /// leader answer reads without one (`None`: every read takes a round).
    /// At most [`crate::lease::span`]; see [`crate::lease`].
    pub read_lease: Option<Duration>,
    /// The clock leases are measured on.
    pub clock: Clock,
    /// A deliberately broken behaviour (simulator canaries only).
    #[cfg(feature = "sim-bugs")]
    pub broken: Broken,
}

impl CoreConfig {
    /// Defaults for node `id`.
    pub fn new(id: u64) -> Self {
        CoreConfig {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_threshold: 1024,
            snapshot_trailing: 8192,
            snapshot_waits_for_image_bytes: true,
            log_cache_bytes: crate::storage::mem::DEFAULT_LOG_CACHE_BYTES,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // 150 ticks = 3 s at the default latency: long enough that a
            // loaded machine's pauses do not demote voters, short enough to
            // replace a dead one within seconds.
            online_ticks: 150,
            read_lease: None,
            clock: Clock::system(),
            #[cfg(feature = "sim-bugs")]
            broken: Broken::None,
        }
    }
}

/// What a proposal asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// An instruction for the State.
    State(Vec<u8>),
    /// A service command.
    Service(ServiceCommand),
    /// A membership change.
    Member(MemberRequest),
}

/// A membership change request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRequest {
    /// Adds a node (or updates it) with this role.
    Set(NodeInfo),
    /// Makes the node a standby (raft learner) that the leader promotes to
    /// voter once it has caught up: a voter is never added cold.
    Learner(NodeInfo),
    /// Removes a node from the cluster.
    Remove(u64),
}

/// How many entries behind the commit index a standby may be and still
/// count as caught up for promotion: a pipelined follower in the steady
/// state is a round trip behind, which at a few thousand writes a second
/// is tens of entries.
pub const PROMOTE_LAG: u64 = 256;

/// Deliberately broken behaviours, compiled only with the `sim-bugs`
/// feature, so the simulator can prove its checkers catch them.
#[cfg(feature = "sim-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Broken {
    /// Behave correctly.
    #[default]
    None,
    /// Resolve a proposal as soon as it is appended, before it commits.
    AckBeforeCommit,
    /// Release messages that depend on a write before it is fsynced.
    SendBeforeFsync,
    /// A lease outlives the leadership it was granted to: a node that
    /// stepped down in the same term answers reads under it.
    LeaseOutlivesLeadership,
}

/// Whether an entry changes the membership (raft conf change, forced
/// membership or a registry change).
pub fn is_membership_entry(e: &Entry) -> bool {
    match e.get_entry_type() {
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => true,
        EntryType::EntryNormal => {
            e.data.first() == Some(&codec::TAG_SERVICE)
                && matches!(
                    codec::decode(&e.data),
                    Payload::Service(
                        ServiceCommand::ForceMembership(_) | ServiceCommand::SetMember(_)
                    )
                )
        }
    }
}

/// The result of an applied proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Log index of the entry.
    pub index: u64,
    /// What the State returned (true for non-State entries).
    pub satisfied: bool,
    /// A value produced by a service command (an allocated id).
    pub value: Option<u64>,
}

/// Why a proposal or read did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader (the leader's id if known, else 0).
    #[error("not the leader (leader: {0})")]
    NotLeader(u64),
    /// Raft dropped the proposal before appending it.
    #[error("proposal dropped by raft")]
    Dropped,
    /// Leadership changed after the entry was appended: it may or may not
    /// commit (outcome unknown).
    #[error("leadership lost, outcome unknown")]
    LeadershipLost,
    /// Another membership change is still in progress.
    #[error("another membership change is in progress")]
    ConfChangeInProgress,
    /// The change is invalid for the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidChange(String),
    /// A read barrier got no answer in time.
    #[error("read index timed out")]
    ReadTimeout,
    /// The disk is failing: writes are refused until it recovers.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The disk is full: writes are refused until space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The core stopped working after a fatal error.
    #[error("consensus core failed: {0}")]
    Failed(String),
}

/// An input to the core.
#[derive(Debug)]
pub enum Input {
    /// One logical clock tick.
    Tick,
    /// A message from a peer.
    Step(Message),
    /// A proposal from a caller.
    Propose(ProposalId, Proposal),
    /// A linearizable read barrier request.
    Read(ReadId),
    /// Everything handed out with [`Action::Persist`] up to this ready number
    /// is durable.
    Persisted(u64),
    /// A snapshot handed out with [`Action::Snapshot`] was written (or not).
    SnapshotWritten {
        /// The file, or why it could not be written.
        result: Result<SnapshotInfo, String>,
        /// How long writing took.
        took: std::time::Duration,
    },
    /// The outcome of streaming a snapshot to a peer.
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether it was received.
        ok: bool,
    },
    /// A peer could not be reached.
    Unreachable(u64),
    /// Hand leadership to this node.
    TransferLeader(u64),
    /// Start an election now (bootstrap of a fresh cluster).
    Campaign,
    /// The caller gave up on this proposal (deadline).
    Abandon(ProposalId),
    /// The leader refused this node's messages because it is no longer a
    /// member. A removed node is not told otherwise: once the removal is
    /// applied, nobody sends to it any more.
    RemovedByLeader,
    /// Writing or syncing the log failed (the persister retries the same
    /// batch): a leader hands leadership to the most caught-up online
    /// voter, so writes go on through a node whose disk works.
    DiskFailed,
}

/// Work to persist before the messages that depend on it may leave.
#[derive(Debug, Clone, Default)]
pub struct PersistBatch {
    /// Ready number to report back with [`Input::Persisted`].
    pub number: u64,
    /// Entries to append (may overwrite a conflicting suffix).
    pub entries: Vec<Entry>,
    /// New term/vote (and commit) to write, if they changed.
    pub hard_state: Option<HardState>,
    /// A snapshot at this index replaced the log: reset the log after it.
    pub snapshot_index: Option<u64>,
    /// Make this commit index durable (a membership change was committed).
    pub commit: Option<u64>,
}

/// An output of the core.
#[derive(Debug)]
pub enum Action {
    /// Send a message to a peer.
    Send(Message),
    /// Write (and fsync) this, then report [`Input::Persisted`].
    Persist(PersistBatch),
    /// Log segments wholly at or below this index may be removed.
    Compact(u64),
    /// Write this snapshot off the driver thread, then report
    /// [`Input::SnapshotWritten`]. One is in flight at a time.
    Snapshot(SnapshotJob),
    /// A proposal finished.
    Resolve(ProposalId, Result<Outcome, ProposeError>),
    /// A read barrier finished: reads may be served at the State from now.
    ReadDone(ReadId, Result<u64, ProposeError>),
    /// Leader or term changed (leader 0: none known).
    LeaderChanged {
        /// The new leader.
        leader: u64,
        /// The current term.
        term: u64,
    },
    /// The cluster registry changed.
    MembershipChanged,
    /// This node was removed from the cluster.
    Removed,
}

/// A snapshot to write: its header and the state frozen at its index.
pub struct SnapshotJob {
    /// What the file's header says.
    pub header: SnapshotHeader,
    image: Box<dyn Image>,
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("index", &self.header.index)
            .finish_non_exhaustive()
    }
}

impl SnapshotJob {
    /// Writes the snapshot into `store` (blocking: run it on its own
    /// thread). Once `cancel` is set, the write stops with an error and
    /// leaves only a temp file, which start-up removes.
    pub fn write(
        self,
        store: &SnapshotStore,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<SnapshotInfo, StorageError> {
        let index = self.header.index;
        let mut image = Some(self.image);
        store.write(&self.header, &mut |w| {
            let image = image
                .take()
                .ok_or_else(|| std::io::Error::other("snapshot body written twice"))?;
            let mut writer = SnapshotWriter {
                out: w,
                cancel,
                index,
                started: std::time::Instant::now(),
                written: 0,
                progress: None,
            };
            let written = image.write_to(&mut writer);
            if let Some(progress) = writer.progress {
                progress.finish();
            }
            written
        })
    }
}

/// Writes a snapshot body: fails once asked to stop (node shutting down),
/// and reports progress once writing has taken a while.
struct SnapshotWriter<'a> {
    out: &'a mut dyn std::io::Write,
    cancel: &'a std::sync::atomic::AtomicBool,
    index: u64,
    started: std::time::Instant,
    written: u64,
    /// Started lazily: most snapshots finish before a line is due.
    progress: Option<Progress>,
}

impl std::io::Write for SnapshotWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("snapshot cancelled: node stopping"));
        }
        let n = self.out.write(buf)?;
        self.written += n as u64;
        if self.progress.is_none() && self.started.elapsed() >= crate::progress::PROGRESS_EVERY {
            let what = format!("writing snapshot {}", self.index);
            self.progress = Some(Progress::start(what, "bytes", None));
        }
        if let Some(p) = &mut self.progress {
            p.set(self.written);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Ticks to wait after a failed snapshot before trying again (1 s at the
/// default 20 ms tick): a full disk must not be hammered.
const SNAPSHOT_RETRY_TICKS: u64 = 50;

/// How long after an image was sent the log is still kept for the peer to
/// replicate past it (10 s at the default tick).
const HOLD_AFTER_SEND_TICKS: u64 = 500;

/// Ticks to wait when the state could not checkpoint because a reader
/// holds an older version (100 ms at the default tick).
const SNAPSHOT_BUSY_TICKS: u64 = 5;

/// A peer being sent an image of the state.
struct CatchingUp {
    /// The snapshot index the image is sent as: raft on the peer asks for
    /// the entries after it.
    index: u64,
    /// The applied index the image is of.
    applied: u64,
    /// The tick its send ended.
    sent: Option<u64>,
}

/// The body of a snapshot whose data is the state's own files: empty.
struct NoData;

impl Image for NoData {
    fn write_to(self: Box<Self>, _out: &mut dyn std::io::Write) -> std::io::Result<()> {
        Ok(())
    }
}

/// A snapshot on its way to a peer (see [`Core::outgoing_snapshot`]).
pub enum OutgoingSnapshot {
    /// The snapshot file, sent as it is.
    File(SnapshotInfo),
    /// A metadata-only snapshot's header with an image of the state frozen
    /// when the send started.
    Image {
        /// The header sent (`files` cleared: the stream carries the data).
        header: SnapshotHeader,
        /// The frozen state.
        image: Box<dyn Image>,
        /// The applied index the image is of.
        applied: u64,
    },
}

impl std::fmt::Debug for OutgoingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutgoingSnapshot::File(info) => f.debug_tuple("File").field(&info.path).finish(),
            OutgoingSnapshot::Image {
                header, applied, ..
            } => f
                .debug_struct("Image")
                .field("index", &header.index)
                .field("applied", applied)
                .finish_non_exhaustive(),
        }
    }
}

impl OutgoingSnapshot {
    /// The snapshot's index and term.
    pub fn index_term(&self) -> (u64, u64) {
        match self {
            OutgoingSnapshot::File(info) => (info.header.index, info.header.term),
            OutgoingSnapshot::Image { header, .. } => (header.index, header.term),
        }
    }

    /// The size of the stream, when known before it is written.
    pub fn size(&self) -> Option<u64> {
        match self {
            OutgoingSnapshot::File(info) => Some(info.size),
            OutgoingSnapshot::Image { .. } => None,
        }
    }

    /// Writes the whole snapshot file's bytes into `out` (blocking: run it
    /// off the driver thread). The image variant holds its versions until
    /// it is written or dropped.
    pub fn write_to(
        self,
        store: &SnapshotStore,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, StorageError> {
        match self {
            OutgoingSnapshot::File(info) => {
                let mut reader = store.raw_reader(&info)?;
                let io = |e| StorageError::io(&info.path, e);
                let n = std::io::copy(&mut reader, out).map_err(io)?;
                out.flush().map_err(io)?;
                Ok(n)
            }
            OutgoingSnapshot::Image { header, image, .. } => {
                let mut image = Some(image);
                crate::storage::snapshot::write_framed(
                    &header,
                    &mut |w| {
                        image
                            .take()
                            .ok_or_else(|| std::io::Error::other("snapshot body written twice"))?
                            .write_to(w)
                    },
                    out,
                )
                .map_err(|e| StorageError::io(store.dir(), e))
            }
        }
    }
}

#[derive(Debug)]
struct Pending {
    id: ProposalId,
    context: Vec<u8>,
}

#[derive(Debug)]
struct Unpersisted {
    number: u64,
    persist: bool,
    /// It changes term or vote.
    new_term: bool,
    messages: Vec<Message>,
}

/// The context of this node's ReadIndex round `round`. The leader keeps
/// pending reads by context and drops one whose context it already holds,
/// so rounds of different nodes (followers forward theirs) must never share
/// one: the node id goes in beside the round number.
fn read_ctx(id: u64, round: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&id.to_le_bytes());
    ctx.extend_from_slice(&round.to_le_bytes());
    ctx
}

/// ReadIndex rounds in flight at once. One at a time made a read that
/// arrived during a round wait for the rest of it and then a whole round
/// of its own (1.5 rounds on average); now a new round starts at once,
/// unless this many are in flight (each costs a heartbeat to every peer).
const READ_ROUNDS: usize = 4;

/// Read barriers: queued callers share one ReadIndex round, and up to
/// [`READ_ROUNDS`] rounds are in flight.
#[derive(Debug, Default)]
struct Reads {
    queued: Vec<ReadId>,
    /// Oldest first.
    inflight: VecDeque<Round>,
    /// (read index, caller): waiting for the State to catch up.
    waiting: Vec<(u64, ReadId)>,
    next_round: u64,
}

/// A ReadIndex round in flight.
#[derive(Debug)]
struct Round {
    ctx: u64,
    callers: Vec<ReadId>,
    /// The tick it started at (it expires after two election timeouts).
    started: u64,
    /// The lease it grants once a quorum acknowledges it.
    stamp: Stamp,
}

/// Draws an election timeout in `[min, max)`; replaces raft-rs's
/// `thread_rng` so a simulator can control elections from its seed.
pub type ElectionRng = Box<dyn FnMut(usize, usize) -> usize + Send>;

/// Everything the core needs to start, as loaded from disk.
pub struct Boot {
    /// Hard state from the meta file.
    pub hard_state: HardState,
    /// The latest snapshot's header, if any.
    pub snapshot: Option<SnapshotHeader>,
    /// Terms of the first entries after the snapshot, whose payloads were
    /// left on disk at load (read back when needed).
    pub dropped_terms: Vec<u64>,
    /// The entries after those (all the entries after the snapshot when
    /// nothing was dropped).
    pub entries: Vec<Entry>,
    /// A standing recovery fence: no vote until the commit index reaches it.
    pub fence: Option<Fence>,
}

/// The consensus core.
pub struct Core<S: State> {
    config: CoreConfig,
    raw: RawNode<RaftLogView>,
    state: S,
    cluster: ClusterMeta,
    conf_state: ConfState,
    snapshots: SnapshotStore,
    seq: u64,
    pending: BTreeMap<u64, Pending>,
    unpersisted: VecDeque<Unpersisted>,
    reads: Reads,
    ticks: u64,
    applied: u64,
    snapshot_index: u64,
    /// The index of the snapshot being written off the driver thread.
    snapshotting: Option<u64>,
    /// No snapshot is started before this tick (after a failure).
    snapshot_retry_tick: u64,
    /// The header of the snapshot waiting for the state's files to be
    /// durable at its index ([`State::checkpoint`]).
    checkpoint_wait: Option<SnapshotHeader>,
    last_promotion_tick: u64,
    /// The tick each peer was last heard from.
    last_heard: HashMap<u64, u64>,
    leader_seen: (u64, u64, StateRole),
    /// This leader has applied an entry of its own term, so every entry
    /// committed in earlier terms is applied here too.
    caught_up_in_term: bool,
    election_rng: Option<ElectionRng>,
    failed: Option<String>,
    removed: bool,
    snapshots_installed: u64,
    /// Snapshots from the leader rebuilt off the driver thread.
    prepared: PreparedSlot,
    /// Peers being sent an image of the state.
    catching_up: HashMap<u64, CatchingUp>,
    /// Highest commit index known durable in the meta file.
    durable_commit: u64,
    /// (ready number, commit) of batches making a commit index durable.
    commit_inflight: VecDeque<(u64, u64)>,
    /// This node applied its own removal at this tick; it reports
    /// [`Action::Removed`] only once the rest of the cluster moved on
    /// (see [`Core::report_deferred_removal`]).
    removal_deferred: Option<u64>,
    /// Where snapshot counts and durations go.
    stats: Arc<crate::persist::Stats>,
    /// Replaying the committed log after a restart: (up to this index,
    /// its progress in entries).
    replay: Option<(u64, Progress)>,
    /// Auto-recovery discarded data this node may have acknowledged: until
    /// the commit index reaches the fence it neither votes nor campaigns
    /// (see [`crate::storage::fence`]).
    fence: Option<Fence>,
    /// Bytes of entries applied since the last snapshot was started.
    applied_bytes: u64,
    /// The leader's read lease.
    lease: Lease,
    /// Leases are on and this node followed a leader before it started:
    /// it ignores vote requests during its first election timeout, which
    /// it may have promised a leader's lease before it stopped
    /// ([`crate::lease`]).
    restarted: bool,
    /// Size of the latest snapshot file: the next one waits until as many
    /// bytes of entries were applied (see [`Core::maybe_snapshot`]).
    image_bytes: u64,
}

/// Context of the rejection a fenced node sends to a leader that believes
/// it holds entries it set aside ([`Core::report_lost_log`]).
const LOST_LOG: &[u8] = b"dqlite-rs:lost-log";

fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl<S: State> Core<S> {
    /// Builds a core from what was loaded from disk. `state` is restored from
    /// the snapshot (when there is one) through `snapshots`.
    pub fn new(
        config: CoreConfig,
        mut state: S,
        snapshots: SnapshotStore,
        boot: Boot,
    ) -> Result<Self, CoreError> {
        let mut cluster = ClusterMeta::default();
        let mut meta = SnapshotMetadata::default();
        if let Some(header) = &boot.snapshot {
            meta = header.metadata();
            cluster = header.cluster.clone();
            if state.applied_index() < header.index {
                if header.files {
                    return Err(CoreError::State(format!(
                        "snapshot {} holds no data: its data is the state's own files, \
                         which hold only index {}",
                        header.index,
                        state.applied_index()
                    )));
                }
                let info = snapshots.find(header.term, header.index)?;
                let progress = Progress::start(
                    format!("restoring snapshot {} at start-up", header.index),
                    "bytes",
                    Some(info.size),
                );
                let mut reader = ProgressReader::new(snapshots.state_reader(&info)?, progress);
                state
                    .restore(header.index, &mut reader)
                    .map_err(|e| CoreError::State(e.to_string()))?;
                reader.finish();
            }
        }
        let image_bytes = boot
            .snapshot
            .as_ref()
            .and_then(|h| snapshots.find(h.term, h.index).ok())
            .map_or(0, |info| info.size);
        let conf_state = meta.get_conf_state().clone();
        let mut hs = boot.hard_state;
        let last = meta.index + (boot.dropped_terms.len() + boot.entries.len()) as u64;
        hs.commit = hs.commit.max(meta.index).min(last);
        let durable_commit = hs.commit;
        // Term 1 is the bootstrap's: every leader's term is higher, and a
        // node that acknowledged one has its term on disk before it did.
        // Without leases no promise outlives a restart.
        let restarted = hs.term > 1 && config.read_lease.is_some();
        let snapshot_index = meta.index;
        let mut storage = RaftLogView::with_dropped(hs, meta, boot.dropped_terms, boot.entries);
        storage.set_cache(snapshots.log_reader(), config.log_cache_bytes);
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied: snapshot_index,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            // Committed entries come in bounded batches, so applying a long
            // log after a restart (read back from disk) never holds it all.
            max_committed_size_per_ready: (config.log_cache_bytes / 4).max(config.max_size_per_msg),
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            // Followers learn a new commit index with the next append or
            // heartbeat instead of from an append of its own: that saves an
            // append and its answer per follower and commit (3-node kvwrite
            // with 8 clients: about 13% more writes, 15% less CPU per
            // write). No write waits for a follower to learn it, and a
            // follower read learns it from the answer to its ReadIndex
            // request (raft-rs commits up to the index answered when the
            // follower holds that entry of the leader's term).
            skip_bcast_commit: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, storage, &discard_logger())?;
        let leader_seen = (raw.raft.leader_id, raw.raft.term, raw.raft.state);
        let mut fence = boot.fence;
        if fence.is_some() && conf_state.voters == [config.id] {
            // No peer holds a copy to catch up from: what was set aside is
            // lost either way, and waiting would only keep the node down.
            warn!("auto-recovery discarded data on the only voter; nothing to catch up from");
            if let Some(f) = fence.take() {
                f.lift().map_err(CoreError::from)?;
            }
        }
        Ok(Core {
            raw,
            state,
            cluster,
            conf_state,
            snapshots,
            seq: 0,
            pending: BTreeMap::new(),
            unpersisted: VecDeque::new(),
            reads: Reads::default(),
            ticks: 0,
            applied: snapshot_index,
            snapshot_index,
            snapshotting: None,
            snapshot_retry_tick: 0,
            checkpoint_wait: None,
            last_promotion_tick: 0,
            last_heard: HashMap::new(),
            leader_seen,
            caught_up_in_term: false,
            election_rng: None,
            failed: None,
            removed: false,
            snapshots_installed: 0,
            prepared: PreparedSlot::default(),
            catching_up: HashMap::new(),
            durable_commit,
            commit_inflight: VecDeque::new(),
            removal_deferred: None,
            stats: Arc::default(),
            replay: (durable_commit > snapshot_index).then(|| {
                let progress = Progress::start(
                    format!(
                        "replaying the log at start-up, entries {} to {durable_commit}",
                        snapshot_index + 1
                    ),
                    "entries",
                    Some(durable_commit - snapshot_index),
                );
                (durable_commit, progress)
            }),
            fence,
            applied_bytes: 0,
            lease: Lease::new(config.read_lease, config.clock.clone()),
            restarted,
            image_bytes,
            config,
        })
    }

    /// The commit index this node must reach before it votes again after
    /// auto-recovery, if it is fenced.
    pub fn fence(&self) -> Option<u64> {
        self.fence.as_ref().map(Fence::upto)
    }

    /// Whether a fenced node must drop this message: votes, pre-votes and
    /// leadership transfers to it.
    fn fenced_out(&self, m: &Message) -> bool {
        self.fence.is_some()
            && matches!(
                m.msg_type,
                MessageType::MsgRequestVote
                    | MessageType::MsgRequestPreVote
                    | MessageType::MsgTimeoutNow
            )
    }

    /// Whether a restarted node must still ignore this vote request: during
    /// its first election timeout it may have been in a leader's lease
    /// before it stopped, and raft-rs forgot whom it followed. A vote for
    /// a leadership transfer is never held back (the leader gave up its
    /// lease for it).
    fn vote_held(&self, m: &Message) -> bool {
        self.restarted
            && self.ticks < self.config.election_tick as u64
            && matches!(
                m.msg_type,
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
            && m.term > self.raw.raft.term
            && m.context != raft::CAMPAIGN_TRANSFER
    }

    /// Hands leadership to `to`, giving up the lease for this term: the
    /// target's forced campaign bypasses every follower's lease.
    fn transfer_leader(&mut self, to: u64) {
        self.lease.bar(self.raw.raft.term);
        self.raw.transfer_leader(to);
    }

    /// Whether this leader may answer a read without a round now.
    fn lease_holds(&self) -> bool {
        #[cfg(feature = "sim-bugs")]
        if self.config.broken == Broken::LeaseOutlivesLeadership {
            return self.lease.holds(self.raw.raft.term);
        }
        self.caught_up_in_term() && self.lease.holds(self.raw.raft.term)
    }

    /// A follower's ReadIndex request answered under this leader's lease,
    /// as raft-rs's own lease-based reads answer it: with the commit
    /// index, which covers every write acknowledged so far. `None`: the
    /// request takes a round. raft-rs forwards the request without a term
    /// (0); one that carries another term goes to raft-rs, which steps
    /// down if it is newer.
    fn leased_read_index(&mut self, m: &mut Message) -> Option<Message> {
        if m.msg_type != MessageType::MsgReadIndex
            || m.from == self.id()
            || (m.term != 0 && m.term != self.raw.raft.term)
            || !self.lease_holds()
        {
            return None;
        }
        self.stats.lease_reads.inc();
        Some(Message {
            msg_type: MessageType::MsgReadIndexResp,
            from: self.id(),
            to: m.from,
            term: self.raw.raft.term,
            index: self.raw.raft.raft_log.committed,
            entries: std::mem::take(&mut m.entries),
            ..Default::default()
        })
    }

    /// Until when this leader may answer reads without a round: it leads,
    /// has applied an entry of its term, and holds a lease (see
    /// [`crate::lease`]). `None` when reads need a round.
    pub fn lease_until(&self) -> Option<std::time::Instant> {
        if !self.caught_up_in_term() {
            return None;
        }
        self.lease.valid_until(self.raw.raft.term)
    }

    /// A leader whose log cannot be written hands leadership to the most
    /// caught-up online voter. Its unwritten entries stay where they are:
    /// the persister retries the same batch, so no index is ever given to
    /// another entry in this term, and a new leader's entries replace them
    /// only through raft's ordinary conflict rule.
    fn hand_over_for_disk(&mut self) {
        if !self.is_leader() || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let me = self.config.id;
        let target = self
            .progress()
            .into_iter()
            .filter(|(id, (_, online))| *id != me && *online)
            .filter(|(id, _)| self.raw.raft.prs().conf().voters().contains(*id))
            .max_by_key(|(_, (matched, _))| *matched)
            .map(|(id, _)| id);
        if let Some(to) = target {
            warn!(to, "the log cannot be written: handing leadership over");
            self.transfer_leader(to);
        }
    }

    /// Tells a leader that believes this node holds more than its log does
    /// (raft-rs never lowers a peer's match index, and ignores a rejection
    /// below it, so it would never resend what was lost). After
    /// auto-recovery, or a damaged last record taken for a torn write. Any
    /// other time the leader's match index is at most our last index and
    /// the leader ignores the report.
    fn report_lost_log(&self, m: &Message, out: &mut Vec<Action>) {
        if m.term < self.raw.raft.term {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let ahead = match m.msg_type {
            MessageType::MsgHeartbeat => m.commit > last,
            MessageType::MsgAppend => m.index > last,
            _ => false,
        };
        if !ahead {
            return;
        }
        let mut reply = Message {
            msg_type: MessageType::MsgAppendResponse,
            to: m.from,
            from: self.config.id,
            term: self.raw.raft.term.max(m.term),
            reject: true,
            reject_hint: last,
            ..Default::default()
        };
        reply.context = LOST_LOG.to_vec().into();
        debug!(
            to = m.from,
            last, "telling the leader this node lost entries"
        );
        out.push(Action::Send(reply));
    }

    /// On the leader: a fenced peer holds no more than `reject_hint`; probe
    /// it from there.
    fn forget_progress(&mut self, m: &Message) {
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Leader || m.term != raft.term {
            return;
        }
        if let Some(pr) = raft.mut_prs().get_mut(m.from) {
            if pr.matched > m.reject_hint {
                info!(
                    peer = m.from,
                    was = pr.matched,
                    now = m.reject_hint,
                    "peer lost entries to auto-recovery: resending them"
                );
                pr.matched = m.reject_hint;
                pr.become_probe();
                pr.next_idx = m.reject_hint + 1;
            }
        }
    }

    /// Lifts the fence once a leader's commit index, learned by
    /// replication, reached it: every entry this node could have helped
    /// commit is in its log again.
    fn maybe_lift_fence(&mut self) {
        let log = &self.raw.raft.raft_log;
        // Durable here too: a crash right after lifting loses nothing.
        let caught_up = log.committed.min(log.persisted);
        let Some(f) = self.fence.as_ref() else {
            return;
        };
        if self.raw.raft.leader_id == 0 || caught_up < f.upto() {
            return;
        }
        match f.lift() {
            Ok(()) => {
                info!(
                    upto = f.upto(),
                    caught_up, "caught up after auto-recovery: voting again"
                );
                self.fence = None;
            }
            // Keep abstaining; the next step tries again.
            Err(e) => warn!(error = %e, "cannot remove the recovery fence"),
        }
    }

    /// Takes snapshots from the leader prepared off the driver thread from
    /// `slot` (see [`crate::prepare`]).
    pub fn set_prepared_slot(&mut self, slot: PreparedSlot) {
        self.prepared = slot;
    }

    /// Records snapshot counts and durations in `stats` from now on.
    pub fn set_stats(&mut self, stats: Arc<crate::persist::Stats>) {
        self.stats = stats;
    }

    /// Replaces raft-rs's randomized election timeout with draws from `rng`
    /// (called with `[min, max)` after every role or term change).
    pub fn set_election_timeout_rng(&mut self, mut rng: ElectionRng) {
        let (min, max) = self.election_bounds();
        self.raw
            .raft
            .set_randomized_election_timeout(rng(min, max).clamp(min, max - 1));
        self.election_rng = Some(rng);
    }

    fn election_bounds(&self) -> (usize, usize) {
        (self.config.election_tick, 2 * self.config.election_tick)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The leader's id (0: unknown).
    pub fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Whether this node is the only voter: no other node's vote or
    /// acknowledgement is needed, so nothing waits on its heartbeats.
    pub fn is_sole_voter(&self) -> bool {
        self.conf_state.voters == [self.config.id] && self.conf_state.voters_outgoing.is_empty()
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Whether this node leads and has applied an entry of its own term:
    /// its state then holds every entry committed before its term, so a
    /// read served from it and followed by a confirmation of leadership
    /// (a read index) is linearizable.
    pub fn caught_up_in_term(&self) -> bool {
        self.caught_up_in_term && self.is_leader()
    }

    /// The raft role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Commit index.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Last applied index.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Index of the latest snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Last index in the log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// The replicated cluster registry (as applied here).
    pub fn cluster(&self) -> &ClusterMeta {
        &self.cluster
    }

    /// The raft configuration (as applied here).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The application state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The log as raft-rs reads it (read access for checkers).
    pub fn log_view(&self) -> &RaftLogView {
        self.raw.store()
    }

    /// The raw raft node (read access for checkers).
    pub fn raw(&self) -> &RawNode<RaftLogView> {
        &self.raw
    }

    /// The snapshot store this core writes to.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// The fatal error that stopped this core, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// How many ReadIndex rounds this core started (batching metric).
    pub fn read_rounds(&self) -> u64 {
        self.stats.read_rounds.get()
    }

    /// How many snapshots from a leader this core installed.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed
    }

    /// Whether this node was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Whether `id` is this node or a peer heard from within
    /// [`CoreConfig::online_ticks`] (only the leader hears from everyone).
    pub fn is_online(&self, id: u64) -> bool {
        id == self.config.id
            || self
                .last_heard
                .get(&id)
                .is_some_and(|t| self.ticks.saturating_sub(*t) <= self.config.online_ticks)
    }

    /// Replication progress of every raft member as the leader sees it
    /// (empty on a follower): id → (matched index, online).
    pub fn progress(&self) -> BTreeMap<u64, (u64, bool)> {
        if !self.is_leader() {
            return BTreeMap::new();
        }
        let me = self.config.id;
        self.raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| {
                let matched = if *id == me {
                    self.raw.raft.raft_log.last_index()
                } else {
                    p.matched
                };
                (*id, (matched, self.is_online(*id)))
            })
            .collect()
    }

    /// Whether a peer has caught up (leader only): it replicates in the
    /// steady state and is at most [`PROMOTE_LAG`] entries behind the
    /// commit index, or it has acknowledged everything committed. Under a
    /// steady stream of writes the commit index moves on every round, so an
    /// exact match may never be seen (a standby assigned voter under load
    /// never got promoted). In an idle cluster a learner that caught up by
    /// snapshot stays in probe state (raft-rs sends it nothing more while
    /// it holds the last entry), so the replicate state alone left such a
    /// standby unpromoted for good; one heard from recently counts then.
    pub fn caught_up(&self, id: u64) -> bool {
        let committed = self.raw.raft.raft_log.committed;
        self.raw.raft.prs().get(id).is_some_and(|p| match p.state {
            raft::ProgressState::Replicate => p.matched.saturating_add(PROMOTE_LAG) >= committed,
            raft::ProgressState::Probe => p.matched >= committed && self.is_online(id),
            raft::ProgressState::Snapshot => false,
        })
    }

    /// Handles one input, then processes any resulting Ready.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Action>) {
        self.handle_input(input, out);
        self.process_ready(out);
    }

    /// Handles one input without processing the Ready (batching: call
    /// [`Core::process_ready`] once after many inputs).
    pub fn handle_input(&mut self, input: Input, out: &mut Vec<Action>) {
        if let Some(why) = &self.failed {
            let err = ProposeError::Failed(why.clone());
            match input {
                Input::Propose(id, _) => out.push(Action::Resolve(id, Err(err))),
                Input::Read(id) => out.push(Action::ReadDone(id, Err(err))),
                _ => {}
            }
            return;
        }
        match input {
            Input::Tick => {
                self.ticks += 1;
                // A fenced node is always a follower; without ticks its
                // election timer never fires, so it never campaigns.
                if self.fence.is_none() {
                    self.raw.tick();
                }
                self.expire_reads(out);
                self.maybe_promote(out);
            }
            Input::Step(mut m) => {
                if m.msg_type == MessageType::MsgAppendResponse && m.context == LOST_LOG {
                    self.forget_progress(&m);
                    self.after_step(out);
                    return;
                }
                self.report_lost_log(&m, out);
                if m.msg_type == MessageType::MsgHeartbeat {
                    // A leader's heartbeat carries min(its commit, what it
                    // last saw this node hold); after auto-recovery set
                    // entries aside that can exceed the log, which raft-rs
                    // treats as fatal. Entries up to our own last index
                    // match the leader's, so clamping commits nothing wrong.
                    m.commit = m.commit.min(self.raw.raft.raft_log.last_index());
                }
                if m.from != 0 {
                    self.last_heard.insert(m.from, self.ticks);
                }
                self.still_needed(&m);
                if self.fenced_out(&m) {
                    debug!(from = m.from, kind = ?m.msg_type, "fenced after auto-recovery: not voting");
                } else if self.vote_held(&m) {
                    debug!(from = m.from, kind = ?m.msg_type, "restarted within an election timeout: not voting yet");
                } else if let Some(answer) = self.leased_read_index(&mut m) {
                    out.push(Action::Send(answer));
                } else if let Err(e) = self.raw.step(m) {
                    // A bad or unexpected peer message is dropped, never fatal.
                    debug!(error = %e, "peer message rejected");
                }
            }
            Input::Propose(id, proposal) => self.propose(id, proposal, out),
            Input::Read(id) => {
                if self.lease_holds() {
                    // No other leader can have been elected: every write
                    // acknowledged so far is in the commit index.
                    let index = self.raw.raft.raft_log.committed;
                    self.reads.waiting.push((index, id));
                    self.stats.lease_reads.inc();
                } else if self.raw.raft.leader_id == 0 {
                    out.push(Action::ReadDone(id, Err(ProposeError::NotLeader(0))));
                } else {
                    self.reads.queued.push(id);
                }
            }
            Input::Persisted(number) => self.on_persisted(number, out),
            Input::SnapshotWritten { result, took } => self.snapshot_written(result, took, out),
            Input::SnapshotSent { to, ok } => {
                if let Some(c) = self.catching_up.get_mut(&to) {
                    // A peer that failed to take it, or never replicates
                    // past it, must not pin the log for long.
                    c.sent = Some(if ok { self.ticks } else { 0 });
                }
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Unreachable(to) => self.raw.report_unreachable(to),
            Input::TransferLeader(to) => self.transfer_leader(to),
            Input::Campaign if self.fence.is_some() => {
                info!("fenced after auto-recovery: not campaigning");
            }
            Input::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    debug!(error = %e, "campaign refused");
                }
            }
            Input::Abandon(id) => self.pending.retain(|_, p| p.id != id),
            Input::DiskFailed => self.hand_over_for_disk(),
            Input::RemovedByLeader => {
                if !self.removed {
                    info!("the leader no longer counts this node as a member");
                    self.removed = true;
                    self.removal_deferred = None;
                    out.push(Action::Removed);
                }
            }
        }
        // Read rounds start in process_ready, so every read handed in
        // before it shares one round.
        self.after_step(out);
    }

    fn propose(&mut self, id: ProposalId, proposal: Proposal, out: &mut Vec<Action>) {
        if !self.is_leader() {
            out.push(Action::Resolve(
                id,
                Err(ProposeError::NotLeader(self.leader())),
            ));
            return;
        }
        self.seq += 1;
        let context = codec::context(self.config.id, self.seq);
        let result = match proposal {
            Proposal::State(instruction) => self
                .raw
                .propose(context.clone(), codec::state_entry(&instruction)),
            Proposal::Service(cmd) => self
                .raw
                .propose(context.clone(), codec::service_entry(&cmd)),
            Proposal::Member(req) => {
                if self.raw.raft.has_pending_conf() {
                    out.push(Action::Resolve(id, Err(ProposeError::ConfChangeInProgress)));
                    return;
                }
                match self.conf_change_for(&req) {
                    Ok(Some(cc)) => self.raw.propose_conf_change(context.clone(), cc),
                    Ok(None) => {
                        // Registry-only change (e.g. a new spare): a service entry.
                        let change = match req {
                            MemberRequest::Set(n) => MemberChange::Set(n),
                            // Already a learner: only the promotion mark.
                            MemberRequest::Learner(n) => MemberChange::Promote(n.id),
                            MemberRequest::Remove(i) => MemberChange::Remove(i),
                        };
                        let cmd = ServiceCommand::SetMember(change);
                        self.raw
                            .propose(context.clone(), codec::service_entry(&cmd))
                    }
                    Err(e) => {
                        out.push(Action::Resolve(id, Err(e)));
                        return;
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                #[cfg(feature = "sim-bugs")]
                if self.config.broken == Broken::AckBeforeCommit {
                    let outcome = Outcome {
                        index,
                        satisfied: true,
                        value: None,
                    };
                    out.push(Action::Resolve(id, Ok(outcome)));
                    return;
                }
                self.pending.insert(index, Pending { id, context });
            }
            Err(e) => {
                debug!(error = %e, "proposal dropped");
                out.push(Action::Resolve(id, Err(ProposeError::Dropped)));
            }
        }
    }

    /// The raft change for a membership request (`None`: registry only).
    fn conf_change_for(&self, req: &MemberRequest) -> Result<Option<ConfChangeV2>, ProposeError> {
        let cs = &self.conf_state;
        let (node, change_type, changes) = match req {
            MemberRequest::Set(n) => {
                let in_raft = cs.voters.contains(&n.id) || cs.learners.contains(&n.id);
                let ty = match n.role {
                    Role::Voter => ConfChangeType::AddNode,
                    Role::StandBy => ConfChangeType::AddLearnerNode,
                    Role::Spare if in_raft => ConfChangeType::RemoveNode,
                    Role::Spare => return Ok(None),
                };
                (n.id, ty, vec![MemberChange::Set(n.clone())])
            }
            MemberRequest::Learner(n) => {
                if cs.learners.contains(&n.id) {
                    return Ok(None);
                }
                if cs.voters.contains(&n.id) {
                    return Err(ProposeError::InvalidChange(format!(
                        "node {} is already a voter",
                        n.id
                    )));
                }
                let node = NodeInfo {
                    role: Role::StandBy,
                    ..n.clone()
                };
                (
                    n.id,
                    ConfChangeType::AddLearnerNode,
                    vec![MemberChange::Set(node), MemberChange::Promote(n.id)],
                )
            }
            MemberRequest::Remove(id) => {
                let in_raft = cs.voters.contains(id) || cs.learners.contains(id);
                if !in_raft {
                    return Ok(None);
                }
                (
                    *id,
                    ConfChangeType::RemoveNode,
                    vec![MemberChange::Remove(*id)],
                )
            }
        };
        if node == self.config.id && change_type != ConfChangeType::AddNode {
            // raft-rs panics when a leader applies its own removal; hand
            // leadership over first (found by the simulator).
            return Err(ProposeError::InvalidChange(
                "the leader cannot remove or demote itself; transfer leadership first".into(),
            ));
        }
        let removing_voter = change_type != ConfChangeType::AddNode && cs.voters.contains(&node);
        if removing_voter && cs.voters.len() == 1 {
            return Err(ProposeError::InvalidChange(
                "cannot remove the last voter".into(),
            ));
        }
        if removing_voter {
            // The voters left must still hold a quorum of online members,
            // or the change would wedge the cluster.
            let left: Vec<u64> = cs.voters.iter().copied().filter(|v| *v != node).collect();
            let online = left.iter().filter(|v| self.is_online(**v)).count();
            if online < left.len() / 2 + 1 {
                return Err(ProposeError::InvalidChange(format!(
                    "removing voter {node} would leave {online} online of {} voters, \
                     fewer than a quorum",
                    left.len()
                )));
            }
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = node;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.mut_changes().push(single);
        cc.set_context(codec::member_changes(&changes).into());
        Ok(Some(cc))
    }

    /// Leader: promote standbys that joined as future voters once caught up.
    fn maybe_promote(&mut self, out: &mut Vec<Action>) {
        if !self.is_leader()
            || self.raw.raft.has_pending_conf()
            || self.ticks < self.last_promotion_tick + self.config.election_tick as u64
        {
            return;
        }
        let candidate = self
            .cluster
            .promote
            .iter()
            .filter_map(|id| self.cluster.nodes.get(id))
            .find(|n| n.role == Role::StandBy && self.caught_up(n.id))
            .cloned();
        if let Some(mut node) = candidate {
            info!(node = node.id, "promoting caught-up standby to voter");
            self.last_promotion_tick = self.ticks;
            node.role = Role::Voter;
            self.seq += 1;
            let id = INTERNAL_PROPOSAL + self.seq;
            self.propose(id, Proposal::Member(MemberRequest::Set(node)), out);
        }
    }

    fn start_read_round(&mut self) {
        let term = self.raw.raft.term;
        // With leases on, a leader renews its lease before it runs out
        // with a round of no callers, so reads rarely wait for one.
        let renew = self.reads.inflight.is_empty()
            && self.caught_up_in_term()
            && self.lease.wants_renewal(term);
        if self.reads.inflight.len() >= READ_ROUNDS || (self.reads.queued.is_empty() && !renew) {
            return;
        }
        // raft-rs silently drops a ReadIndex on a leader that has not yet
        // committed an entry in its term; wait for that instead.
        if self.is_leader() && !self.raw.raft.commit_to_current_term() {
            return;
        }
        self.reads.next_round += 1;
        let ctx = self.reads.next_round;
        let callers = std::mem::take(&mut self.reads.queued);
        let stamp = self.lease.stamp(term);
        self.raw.read_index(read_ctx(self.id(), ctx));
        self.stats.read_rounds.inc();
        self.reads.inflight.push_back(Round {
            ctx,
            callers,
            started: self.ticks,
            stamp,
        });
    }

    fn expire_reads(&mut self, out: &mut Vec<Action>) {
        let limit = 2 * self.config.election_tick as u64;
        // Rounds start in order, so they expire in order.
        while let Some(round) = self.reads.inflight.front() {
            if self.ticks < round.started + limit {
                break;
            }
            if let Some(round) = self.reads.inflight.pop_front() {
                for id in round.callers {
                    out.push(Action::ReadDone(id, Err(ProposeError::ReadTimeout)));
                }
            }
        }
        if self.raw.raft.leader_id == 0 {
            for id in self.reads.queued.drain(..) {
                out.push(Action::ReadDone(id, Err(ProposeError::NotLeader(0))));
            }
        }
    }

    /// After a step: election timeout from the seeded RNG, leader changes.
    fn after_step(&mut self, out: &mut Vec<Action>) {
        self.report_deferred_removal(out);
        self.maybe_lift_fence();
        let now = (
            self.raw.raft.leader_id,
            self.raw.raft.term,
            self.raw.raft.state,
        );
        if now == self.leader_seen {
            return;
        }
        let (min, max) = self.election_bounds();
        if let Some(rng) = self.election_rng.as_mut() {
            let t = rng(min, max).clamp(min, max - 1);
            self.raw.raft.set_randomized_election_timeout(t);
        }
        self.caught_up_in_term = false;
        let was_leader = self.leader_seen.2 == StateRole::Leader;
        if was_leader && now.2 != StateRole::Leader {
            // Appended but not applied: the outcome is unknown to us now.
            for (_, p) in std::mem::take(&mut self.pending) {
                out.push(Action::Resolve(p.id, Err(ProposeError::LeadershipLost)));
            }
        }
        if (now.0, now.1) != (self.leader_seen.0, self.leader_seen.1) {
            out.push(Action::LeaderChanged {
                leader: now.0,
                term: now.1,
            });
        }
        self.leader_seen = now;
    }

    /// raft-rs keeps a leader that applied its own removal (or demotion) as
    /// leader, and its next append response or fsync report unwraps the
    /// leader's own (now missing) progress: a panic (found by the simulator,
    /// seed 3325: node 3 was elected while `Remove(3)`, proposed by the
    /// previous leader, was still uncommitted, then committed it). The core
    /// refuses to propose such a change, but it can reach a leader this way,
    /// so the leader steps down as soon as it applies it.
    ///
    /// The remaining voters apply the change only once they learn its commit,
    /// and until then may still need this node's vote (seed 1699: the
    /// removed leader stopped and the survivor, still counting it, never won
    /// an election). So before stepping down the leader broadcasts its commit
    /// index and hands leadership to a fully caught-up voter, and it reports
    /// [`Action::Removed`] (after which a service may stop it) only once a
    /// new leader committed an entry of its term (so it applied the removal)
    /// or a long grace period passed.
    fn step_down_if_removed(&mut self) {
        let me = self.config.id;
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Leader || raft.prs().conf().voters().contains(me) {
            return;
        }
        warn!("leader removed or demoted by a committed change; stepping down");
        raft.bcast_append();
        let last = raft.raft_log.last_index();
        let heir = self
            .conf_state
            .voters
            .iter()
            .copied()
            .filter(|&id| id != me)
            .max_by_key(|&id| raft.prs().get(id).map_or(0, |p| p.matched))
            .filter(|&id| raft.prs().get(id).is_some_and(|p| p.matched == last));
        if let Some(heir) = heir {
            raft.send_timeout_now(heir);
        }
        let term = raft.term;
        raft.become_follower(term, raft::INVALID_ID);
    }

    /// A removed node asked for a vote, or sent entries or a heartbeat, is
    /// still a voter to whoever sent it (a candidate asks only its voters,
    /// a leader replicates only to its members): its grace period starts
    /// again. Found by the simulator (store seed 6795): the removed node's
    /// grace ran out, counted from when it applied its removal, while the
    /// one other voter kept crashing and restarting; that voter had the
    /// removal in its log but not known committed, so it still needed the
    /// removed node's vote and ack, and nobody was left to give them.
    fn still_needed(&mut self, m: &Message) {
        let asks = matches!(
            m.msg_type,
            MessageType::MsgRequestVote
                | MessageType::MsgRequestPreVote
                | MessageType::MsgAppend
                | MessageType::MsgHeartbeat
        );
        if asks && !self.removed {
            if let Some(since) = self.removal_deferred.as_mut() {
                *since = self.ticks;
            }
        }
    }

    /// Reports a deferred removal once the rest of the cluster no longer
    /// needs this node, or after a grace period without a word from a
    /// node that still counts it.
    fn report_deferred_removal(&mut self, out: &mut Vec<Action>) {
        let Some(since) = self.removal_deferred else {
            return;
        };
        // A new leader that committed an entry of its own term has applied
        // the removal (it was committed earlier) and needs us no more.
        let leader = self.raw.raft.leader_id;
        let moved_on =
            leader != 0 && leader != self.config.id && self.raw.raft.commit_to_current_term();
        let grace = 10 * self.config.election_tick as u64;
        if moved_on || self.ticks >= since + grace {
            self.removal_deferred = None;
            if !self.removed {
                info!("this node was removed from the cluster");
                self.removed = true;
                out.push(Action::Removed);
            }
        }
    }

    fn on_persisted(&mut self, number: u64, out: &mut Vec<Action>) {
        let mut done = 0;
        let mut released = Vec::new();
        while let Some(front) = self.unpersisted.front() {
            if front.persist && front.number > number {
                break;
            }
            if let Some(f) = self.unpersisted.pop_front() {
                done = f.number;
                released.extend(f.messages);
            }
        }
        out.extend(
            crate::acks::coalesce(released)
                .into_iter()
                .map(Action::Send),
        );
        if done > 0 {
            self.raw.on_persist_ready(done);
            self.report_applied();
        }
        while let Some(&(n, commit)) = self.commit_inflight.front() {
            if n > number {
                break;
            }
            self.durable_commit = self.durable_commit.max(commit);
            self.commit_inflight.pop_front();
        }
    }

    /// Drains raft's Ready (bounded: a Ready only appears after new input or
    /// progress, and each pass consumes it).
    pub fn process_ready(&mut self, out: &mut Vec<Action>) {
        for _ in 0..64 {
            // Before taking the Ready, so a new round's heartbeats go out now.
            self.start_read_round();
            self.check_read_failure(out);
            if self.failed.is_some() || !self.raw.has_ready() {
                break;
            }
            if let Err(e) = self.process_one_ready(out) {
                warn!(error = %e, "consensus core failed");
                self.fail(e.to_string(), out);
            }
            self.after_step(out);
        }
        self.resolve_reads(out);
        if let Err(e) = self.maybe_snapshot(out) {
            warn!(error = %e, "snapshot failed; will retry");
        }
    }

    fn fail(&mut self, why: String, out: &mut Vec<Action>) {
        for (_, p) in std::mem::take(&mut self.pending) {
            out.push(Action::Resolve(
                p.id,
                Err(ProposeError::Failed(why.clone())),
            ));
        }
        self.failed = Some(why);
    }

    /// Entries raft needed (to apply, or to decide on) could not be read
    /// back from the log files: nothing decided from them may leave the core.
    fn check_read_failure(&mut self, out: &mut Vec<Action>) {
        if self.failed.is_some() {
            return;
        }
        if let Some(why) = self.raw.store().take_read_failure() {
            warn!(error = %why, "consensus core failed");
            self.fail(format!("log read failed: {why}"), out);
        }
    }

    fn process_one_ready(&mut self, out: &mut Vec<Action>) -> Result<(), CoreError> {
        let mut rd = self.raw.ready();
        if let Some(why) = self.raw.store().take_read_failure() {
            return Err(CoreError::Storage(crate::storage::StorageError::Corrupt {
                path: std::path::PathBuf::new(),
                detail: format!("log read failed: {why}"),
            }));
        }
        let committed = rd.take_committed_entries();
        // A membership change must never be forgotten by a restart: the
        // configuration comes from the snapshot plus the entries up to the
        // durable commit index. So when this Ready commits one, its commit
        // index is made durable before any message that could reveal the
        // new commit leaves this node (found by the simulator, seed 62).
        let membership_commit = committed
            .iter()
            .any(|e| e.index > self.durable_commit && is_membership_entry(e))
            .then(|| committed.last().map_or(0, |e| e.index));
        // A leader's appends go out before its own log is durable, but never
        // before the term they carry: a leader that crashed before its new
        // term was durable could vote again in that term, and a second
        // leader's entry at an index and term its followers already hold
        // would be taken for theirs (found by the simulator, store node,
        // seed 6070).
        let term_changes = rd.hs().is_some_and(|hs| {
            let before = self.raw.store().hard_state();
            hs.term != before.term || hs.vote != before.vote
        }) || self.unpersisted.iter().any(|u| u.new_term);
        let hold = membership_commit.is_some() || !self.commit_inflight.is_empty() || term_changes;
        // 1. Messages that need no persistence (a leader's appends).
        let mut held = Vec::new();
        let immediate = rd.take_messages();
        if hold {
            held = immediate;
        } else {
            out.extend(immediate.into_iter().map(Action::Send));
        }
        // 2. Snapshot.
        let mut snapshot_index = None;
        if !rd.snapshot().is_empty() {
            let meta = rd.snapshot().get_metadata().clone();
            self.install_snapshot(&meta)?;
            // The registry came with it: the transport must learn the
            // members added since (a standby that caught up by snapshot
            // could not answer a new leader it had never heard of).
            out.push(Action::MembershipChanged);
            snapshot_index = Some(meta.index);
        }
        // 3. Committed entries.
        for entry in committed {
            self.apply_entry(entry, out)?;
        }
        self.report_replay();
        // Read states.
        for rs in rd.take_read_states() {
            self.on_read_state(rs.index, &rs.request_ctx);
        }
        // 4/5. Entries and hard state: readable by raft now, durable later.
        let entries = rd.take_entries();
        self.raw.mut_store().append(&entries);
        let hard_state = rd.hs().cloned();
        let number = rd.number();
        let mut new_term = false;
        if let Some(hs) = &hard_state {
            let before = self.raw.store().hard_state();
            new_term = hs.term != before.term || hs.vote != before.vote;
            self.raw.mut_store().set_hard_state(hs.clone());
        }
        let persist = rd.must_sync()
            || !entries.is_empty()
            || snapshot_index.is_some()
            || membership_commit.is_some();
        held.extend(rd.take_persisted_messages());
        let term_durable = !new_term && !self.unpersisted.iter().any(|u| u.new_term);
        if term_durable && (persist || !self.unpersisted.is_empty()) {
            // A follower's heartbeat responses say only "I follow you in
            // this term": they need no entry to be durable, only the term,
            // so they do not queue behind a large append's fsync (a 16 MiB
            // transaction made followers silent long enough for the leader
            // to step down). etcd's raft sends them at once too.
            let (now, later): (Vec<_>, Vec<_>) = held
                .into_iter()
                .partition(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse);
            out.extend(now.into_iter().map(Action::Send));
            held = later;
        }
        if persist {
            if let Some(c) = membership_commit {
                self.commit_inflight.push_back((number, c));
            }
            out.push(Action::Persist(PersistBatch {
                number,
                entries,
                hard_state: hard_state.or_else(|| Some(self.raw.store().hard_state().clone())),
                snapshot_index,
                commit: membership_commit,
            }));
        }
        self.raw.advance_append_async(rd);
        if self.broken_send_before_fsync() {
            out.extend(held.drain(..).map(Action::Send));
        }
        if !persist && self.unpersisted.is_empty() {
            out.extend(held.into_iter().map(Action::Send));
            self.raw.on_persist_ready(number);
        } else {
            self.unpersisted.push_back(Unpersisted {
                number,
                persist,
                new_term,
                messages: held,
            });
        }
        self.report_applied();
        Ok(())
    }

    #[cfg(feature = "sim-bugs")]
    fn broken_send_before_fsync(&self) -> bool {
        self.config.broken == Broken::SendBeforeFsync
    }

    #[cfg(not(feature = "sim-bugs"))]
    fn broken_send_before_fsync(&self) -> bool {
        false
    }

    /// Tells raft how far we applied. raft-rs requires applied ≤ persisted,
    /// and an installed snapshot is only persisted once the log reset is
    /// durable, so this lags until then.
    fn report_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let applied = self.applied.min(log.persisted).min(log.committed);
        if applied > log.applied {
            self.raw.advance_apply_to(applied);
        }
        // Applied entries are durable and committed: they may leave memory.
        let applied = self.raw.raft.raft_log.applied;
        self.raw.mut_store().evict(applied);
    }

    /// Logs the progress of the start-up replay, and its end.
    fn report_replay(&mut self) {
        let Some((target, progress)) = &mut self.replay else {
            return;
        };
        let target = *target;
        let first = target.saturating_sub(progress.total_or_zero());
        progress.set(self.applied.saturating_sub(first));
        if self.applied >= target {
            if let Some((_, progress)) = self.replay.take() {
                progress.finish();
            }
        }
    }

    fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), CoreError> {
        let started = std::time::Instant::now();
        let info = self.snapshots.find(meta.term, meta.index)?;
        let swapped = match self.prepared.take(meta.term, meta.index) {
            Some(prepared) => match self.state.install(meta.index, prepared) {
                Ok(()) => true,
                Err(e) => {
                    warn!(index = meta.index, error = %e, "the snapshot prepared off the driver thread cannot be installed; restoring it here");
                    false
                }
            },
            None => false,
        };
        if swapped {
            info!(
                index = meta.index,
                term = meta.term,
                "installed snapshot from the leader, prepared off the driver thread"
            );
        } else {
            let progress = Progress::start(
                format!(
                    "installing snapshot {} (term {}) from the leader",
                    meta.index, meta.term
                ),
                "bytes",
                Some(info.size),
            );
            let mut reader = ProgressReader::new(self.snapshots.state_reader(&info)?, progress);
            self.state
                .restore(meta.index, &mut reader)
                .map_err(|e| CoreError::State(e.to_string()))?;
            reader.finish();
        }
        let kept = self.keep_only_metadata(&info);
        self.stats
            .snapshot(&crate::persist::SnapshotKind::INSTALLED, started.elapsed());
        self.cluster = info.header.cluster.clone();
        self.conf_state = meta.get_conf_state().clone();
        self.raw.mut_store().apply_snapshot(meta.clone());
        self.applied = meta.index;
        self.durable_commit = self.durable_commit.max(meta.index);
        self.snapshot_index = meta.index;
        // The byte rule of `maybe_snapshot` counts from the file kept: a
        // node that joined with an empty state would otherwise write the
        // whole image again every `snapshot_threshold` entries (memory
        // mode), and a disk-mode node, which keeps only the metadata,
        // would wait for an image's worth of log before its next snapshot.
        self.image_bytes = kept;
        self.applied_bytes = 0;
        self.snapshots_installed += 1;
        self.pending.retain(|index, _| *index > meta.index);
        if let Err(e) = self.snapshots.prune(2) {
            warn!(error = %e, "pruning snapshots failed");
        }
        Ok(())
    }

    /// After installing a snapshot into a state that keeps its own files,
    /// the received copy of the data is redundant: it is replaced by a
    /// metadata-only file, so the node holds the data once on disk.
    /// Returns the size of the snapshot file kept.
    fn keep_only_metadata(&mut self, info: &SnapshotInfo) -> u64 {
        // The restore made the files durable at its index. Otherwise (a
        // state without files) keeping the full copy is safe, only larger;
        // the next local snapshot prunes it.
        if !self
            .state
            .checkpointed()
            .is_ok_and(|at| at >= info.header.index)
        {
            return info.size;
        }
        let mut header = info.header.clone();
        header.files = true;
        match self.snapshots.write(&header, &mut |_| Ok(())) {
            Ok(kept) => kept.size,
            Err(e) => {
                warn!(error = %e, "replacing the installed snapshot by its metadata failed");
                info.size
            }
        }
    }

    fn apply_entry(&mut self, entry: Entry, out: &mut Vec<Action>) -> Result<(), CoreError> {
        let index = entry.index;
        if index <= self.applied {
            return Ok(());
        }
        if entry.term == self.raw.raft.term && self.is_leader() {
            self.caught_up_in_term = true;
        }
        let mut outcome = Outcome {
            index,
            satisfied: true,
            value: None,
        };
        let fresh = index > self.state.applied_index();
        self.applied_bytes += entry.data.len() as u64;
        match entry.get_entry_type() {
            EntryType::EntryNormal => match codec::decode(&entry.data) {
                Payload::State(instruction) => {
                    if fresh {
                        outcome.satisfied = self.state.apply(index, instruction).map_err(|e| {
                            CoreError::State(format!("cannot apply entry {index}: {e}"))
                        })?;
                    }
                }
                Payload::Service(cmd) => {
                    outcome.value = self.apply_service(&cmd, out)?;
                    if fresh {
                        self.state.skip(index);
                    }
                }
                Payload::Empty | Payload::Unknown => {
                    if fresh {
                        self.state.skip(index);
                    }
                }
            },
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                self.apply_conf_change(&entry, out)?;
                if fresh {
                    self.state.skip(index);
                }
            }
        }
        self.applied = index;
        if let Some(p) = self.pending.remove(&index) {
            let result = if p.context == entry.context {
                Ok(outcome)
            } else {
                // Another entry took this index: ours was lost (or, for a conf
                // change refused by raft, replaced by an empty entry).
                Err(ProposeError::LeadershipLost)
            };
            if p.id < INTERNAL_PROPOSAL {
                out.push(Action::Resolve(p.id, result));
            }
        }
        Ok(())
    }

    fn apply_service(
        &mut self,
        cmd: &ServiceCommand,
        out: &mut Vec<Action>,
    ) -> Result<Option<u64>, CoreError> {
        let value = self.cluster.apply(cmd);
        match cmd {
            ServiceCommand::ForceMembership(nodes) => {
                self.force_conf(nodes)?;
                out.push(Action::MembershipChanged);
            }
            ServiceCommand::SetMember(_) => out.push(Action::MembershipChanged),
            _ => {}
        }
        Ok(value)
    }

    /// Offline recovery entry: make raft's configuration exactly `nodes`,
    /// bypassing quorum (the operator decided the others are gone).
    fn force_conf(&mut self, nodes: &[NodeInfo]) -> Result<(), CoreError> {
        let cs = &self.conf_state;
        let mut changes = Vec::new();
        let mut push = |id: u64, ty: ConfChangeType| {
            let mut s = ConfChangeSingle::default();
            s.set_change_type(ty);
            s.node_id = id;
            changes.push(s);
        };
        let wanted = |role: Role| nodes.iter().filter(move |n| n.role == role).map(|n| n.id);
        for id in cs.voters.iter().chain(cs.learners.iter()) {
            if !nodes.iter().any(|n| n.id == *id && n.role != Role::Spare) {
                push(*id, ConfChangeType::RemoveNode);
            }
        }
        for id in wanted(Role::Voter) {
            if !cs.voters.contains(&id) {
                push(id, ConfChangeType::AddNode);
            }
        }
        for id in wanted(Role::StandBy) {
            if !cs.learners.contains(&id) {
                push(id, ConfChangeType::AddLearnerNode);
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let mut enter = ConfChangeV2::default();
        enter.set_transition(ConfChangeTransition::Explicit);
        enter.set_changes(changes.into());
        if !self.conf_state.voters_outgoing.is_empty() {
            self.raw.apply_conf_change(&ConfChangeV2::default())?;
        }
        self.raw.apply_conf_change(&enter)?;
        // Leave the joint configuration at once (an empty change).
        self.conf_state = self.raw.apply_conf_change(&ConfChangeV2::default())?;
        self.step_down_if_removed();
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry, out: &mut Vec<Action>) -> Result<(), CoreError> {
        let cc = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|e| CoreError::Decode(e.to_string()))?
        } else {
            let v1 = raft::eraftpb::ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| CoreError::Decode(e.to_string()))?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut cc = ConfChangeV2::default();
            cc.mut_changes().push(single);
            cc.context = v1.context;
            cc
        };
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                self.conf_state = cs;
                self.lease.membership_changed();
            }
            Err(e) => {
                // Deterministic on every node; the registry is left as is.
                warn!(error = %e, index = entry.index, "conf change rejected by raft");
                return Ok(());
            }
        }
        self.step_down_if_removed();
        for change in codec::decode_member_changes(&cc.context) {
            self.cluster.apply_change(&change);
        }
        out.push(Action::MembershipChanged);
        let me = self.config.id;
        let in_raft = self.conf_state.voters.contains(&me)
            || self.conf_state.learners.contains(&me)
            || self.conf_state.voters_outgoing.contains(&me);
        if !in_raft && !self.cluster.nodes.contains_key(&me) && !self.removed && self.applied > 0 {
            // The other members apply the change only once they learn its
            // commit, and until then may need this node's vote or ack
            // (seeds 1699, 7698): report it when they no longer do.
            self.removal_deferred.get_or_insert(self.ticks);
            self.report_deferred_removal(out);
        }
        Ok(())
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        // A read state of a round no longer in flight (expired) leaves the
        // others, and the ticks they started at, as they were: their expiry
        // must not move.
        let id = self.id();
        let Some(at) = self
            .reads
            .inflight
            .iter()
            .position(|round| ctx == read_ctx(id, round.ctx).as_slice())
        else {
            return;
        };
        if let Some(round) = self.reads.inflight.remove(at) {
            if self.is_leader() {
                self.lease.confirmed(round.stamp, self.raw.raft.term);
            }
            self.reads
                .waiting
                .extend(round.callers.into_iter().map(|c| (index, c)));
        }
    }

    fn resolve_reads(&mut self, out: &mut Vec<Action>) {
        let applied = self.applied;
        self.reads.waiting.retain(|(index, id)| {
            if *index <= applied {
                out.push(Action::ReadDone(*id, Ok(*index)));
                false
            } else {
                true
            }
        });
    }

    /// Starts a snapshot when enough entries were applied since the last
    /// one (or raft asked for a newer one), unless one is being written.
    ///
    /// Enough is `snapshot_threshold` entries *and* as many bytes of
    /// entries as the last snapshot file holds: writing a whole image of a
    /// large state every threshold entries of small changes (a 1 KiB insert
    /// is about 1.3 KB of entry) would cost many times the log's own writes
    /// and most of the CPU. So snapshots cost at most what the log does,
    /// and the log holds at most about one image's worth behind a snapshot
    /// (plus `snapshot_trailing` entries).
    fn maybe_snapshot(&mut self, out: &mut Vec<Action>) -> Result<(), CoreError> {
        if self.failed.is_some() {
            return Ok(());
        }
        if let Some(header) = self.checkpoint_wait.take() {
            return self.snapshot_when_checkpointed(header, out);
        }
        if self.snapshotting.is_some() || self.ticks < self.snapshot_retry_tick {
            return Ok(());
        }
        let requested = self.raw.store().take_snapshot_request();
        let due = self.applied >= self.snapshot_index + self.config.snapshot_threshold
            && (self.applied_bytes >= self.image_bytes
                || !self.config.snapshot_waits_for_image_bytes);
        if !requested && !due {
            return Ok(());
        }
        self.take_snapshot(out)
    }

    /// Freezes the state at the applied index and hands it out to be
    /// written ([`Action::Snapshot`]); the log is compacted behind it once
    /// it is durable ([`Input::SnapshotWritten`]). Until then raft keeps
    /// using the previous snapshot.
    pub fn take_snapshot(&mut self, out: &mut Vec<Action>) -> Result<(), CoreError> {
        let index = self.applied;
        if index == 0 || index == self.snapshot_index || self.snapshotting.is_some() {
            return Ok(());
        }
        let term = self.raw.raft.raft_log.term(index)?;
        let header = SnapshotHeader {
            index,
            term,
            conf_state: ConfStateCopy::from(&self.conf_state),
            cluster: self.cluster.clone(),
            files: true,
        };
        match self.state.checkpoint() {
            None => {}
            Some(Ok(true)) => {
                // The metadata is of this index, as the files will be.
                self.snapshotting = Some(index);
                self.applied_bytes = 0;
                self.checkpoint_wait = Some(header);
                return Ok(());
            }
            Some(Ok(false)) => {
                // A reader holds an older version of the files; it is
                // usually gone within a transaction's time.
                debug!(index, "state files busy; snapshot postponed");
                self.snapshot_retry_tick = self.ticks + SNAPSHOT_BUSY_TICKS;
                return Ok(());
            }
            Some(Err(e)) => {
                self.snapshot_retry_tick = self.ticks + SNAPSHOT_RETRY_TICKS;
                return Err(CoreError::State(format!(
                    "checkpointing the state for a snapshot: {e}"
                )));
            }
        }
        let image = self
            .state
            .freeze()
            .map_err(|e| CoreError::State(format!("freezing the state for a snapshot: {e}")))?;
        self.snapshotting = Some(index);
        self.applied_bytes = 0;
        out.push(Action::Snapshot(SnapshotJob {
            header: SnapshotHeader {
                files: false,
                ..header
            },
            image,
        }));
        Ok(())
    }

    /// A snapshot whose data is the state's files is written (metadata
    /// only) once they are durable at its index; until then it waits,
    /// while entries go on being applied.
    fn snapshot_when_checkpointed(
        &mut self,
        header: SnapshotHeader,
        out: &mut Vec<Action>,
    ) -> Result<(), CoreError> {
        match self.state.checkpointed() {
            Ok(at) if at >= header.index => {
                out.push(Action::Snapshot(SnapshotJob {
                    header,
                    image: Box::new(NoData),
                }));
                Ok(())
            }
            Ok(_) => {
                self.checkpoint_wait = Some(header);
                Ok(())
            }
            Err(e) => {
                self.snapshotting = None;
                self.snapshot_retry_tick = self.ticks + SNAPSHOT_RETRY_TICKS;
                Err(CoreError::State(format!(
                    "checkpointing the state for a snapshot: {e}"
                )))
            }
        }
    }

    /// What to stream to a peer that needs the snapshot at `index`: the
    /// file itself, or, when the file holds only metadata (its data is the
    /// state's own files), the file's header with a fresh image of the
    /// state frozen now, at the applied index (at or after `index`; the
    /// receiver skips the entries up to it). Called on the driver thread
    /// between applies, so the image is of one applied index. The log is
    /// not compacted past that index until `to` replicated past it (or 10 s
    /// after the send ended).
    pub fn outgoing_snapshot(
        &mut self,
        to: u64,
        term: u64,
        index: u64,
    ) -> Result<OutgoingSnapshot, CoreError> {
        let info = self.snapshots.find(term, index)?;
        if !info.header.files {
            return Ok(OutgoingSnapshot::File(info));
        }
        let image = self
            .state
            .freeze()
            .map_err(|e| CoreError::State(format!("freezing the state for a peer: {e}")))?;
        // Raft may ask again while an image is streaming; the transport
        // drops the second send, so the hold stays the first one's.
        if !self.catching_up.get(&to).is_some_and(|c| c.sent.is_none()) {
            self.catching_up.insert(
                to,
                CatchingUp {
                    index,
                    applied: self.state.applied_index(),
                    sent: None,
                },
            );
        }
        let mut header = info.header;
        header.files = false;
        Ok(OutgoingSnapshot::Image {
            header,
            image,
            applied: self.state.applied_index(),
        })
    }

    /// The log is kept after the snapshot index of every peer being sent an
    /// image, until it has replicated past the image's own index: a GiB
    /// image takes seconds to stream and install, and raft on the peer
    /// then asks for the entries after the snapshot index (its state skips
    /// those the image already holds). A log compacted past them meanwhile
    /// would only make the leader send another image.
    fn compaction_hold(&mut self) -> u64 {
        let prs = self.raw.raft.prs();
        let now = self.ticks;
        self.catching_up.retain(|id, c| {
            prs.get(*id).is_some_and(|p| p.matched < c.applied)
                && c.sent
                    .map_or(true, |t| now.saturating_sub(t) < HOLD_AFTER_SEND_TICKS)
        });
        self.catching_up
            .values()
            .map(|c| c.index)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn snapshot_written(
        &mut self,
        result: Result<SnapshotInfo, String>,
        took: std::time::Duration,
        out: &mut Vec<Action>,
    ) {
        self.snapshotting = None;
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, "snapshot failed; will retry");
                self.snapshot_retry_tick = self.ticks + SNAPSHOT_RETRY_TICKS;
                return;
            }
        };
        let index = info.header.index;
        self.stats
            .snapshot(&crate::persist::SnapshotKind::TAKEN, took);
        if index <= self.snapshot_index {
            // A newer snapshot was installed from the leader meanwhile;
            // pruning removes this one.
            return;
        }
        debug!(index, size = info.size, "snapshot taken");
        self.image_bytes = info.size;
        self.raw.mut_store().set_snapshot(info.header.metadata());
        self.snapshot_index = index;
        let compact_to = index
            .saturating_sub(self.config.snapshot_trailing)
            .min(self.compaction_hold());
        if compact_to > 0 {
            self.raw.mut_store().compact(compact_to);
            out.push(Action::Compact(compact_to));
        }
        if let Err(e) = self.snapshots.prune(2) {
            warn!(error = %e, "pruning snapshots failed");
        }
    }
}

/// Errors that stop a core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// raft-rs refused.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The State failed to restore or snapshot.
    #[error("state: {0}")]
    State(String),
    /// A committed entry does not decode.
    #[error("undecodable committed entry: {0}")]
    Decode(String),
}

/// Builds an owned snapshot store for `raft_dir` (helper for drivers).
pub fn snapshot_store(
    disk: Arc<dyn crate::storage::Disk>,
    raft_dir: &std::path::Path,
) -> Result<SnapshotStore, StorageError> {
    SnapshotStore::new(disk, raft_dir)
}
