//! The driver: one dedicated thread that owns the [`Core`] and does its I/O.
//!
//! Why a thread and not a tokio task: applying entries and writing snapshots
//! call into the application's `State`, which may block (SQLite); keeping
//! that off the reactor threads keeps the HTTP transport responsive. Log
//! writes go to a second thread ([`crate::persist`]) so the leader keeps
//! replicating while its fsync runs, and so many proposals share one fsync;
//! only the sole voter, whom no peer waits for, writes on this thread while
//! that one is idle.
//!
//! Inputs arrive on bounded channels: peer messages are dropped when the
//! queue is full (raft retries), client commands are refused at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use raft::eraftpb::{Message, MessageType};
use raft::StateRole;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::core::{Action, Core, Input, Outcome, Proposal, ProposeError, SnapshotJob};
use crate::membership::ClusterMeta;
use crate::persist::{DiskFault, Job, Persister, Report, Stats};
use crate::transport::{Feedback, Transport};
use crate::State;

/// Capacity of the peer-message and command queues.
pub const QUEUE: usize = 4096;

/// Where the result of a proposal goes.
pub enum Reply {
    /// To a caller waiting on the channel.
    Channel(oneshot::Sender<Result<Outcome, ProposeError>>),
    /// To a function, called on the driver thread: it must not block. No
    /// task and no thread has to wake up to learn the outcome.
    Call(Box<dyn FnOnce(Result<Outcome, ProposeError>) + Send>),
}

impl Reply {
    /// Delivers the result.
    pub(crate) fn send(self, result: Result<Outcome, ProposeError>) {
        match self {
            Reply::Channel(tx) => {
                let _ = tx.send(result);
            }
            Reply::Call(f) => f(result),
        }
    }

    /// A channel whose receiver is gone needs no answer.
    fn is_closed(&self) -> bool {
        matches!(self, Reply::Channel(tx) if tx.is_closed())
    }
}

/// A request from the async side.
pub enum Command {
    /// Propose; the result goes to the reply.
    Propose(Proposal, Reply),
    /// Linearizable read barrier; answers with the read index.
    Read(oneshot::Sender<Result<u64, ProposeError>>),
    /// Hand leadership to a node.
    TransferLeader(u64),
    /// Campaign now.
    Campaign,
    /// A peer's address, from the messages it sent; used while this node
    /// is fenced after auto-recovery, whose registry may have been set
    /// aside with its snapshot (it could not answer the leader otherwise).
    LearnPeer(u64, String),
    /// Stop the driver.
    Stop(oneshot::Sender<()>),
}

/// What the driver publishes after every step. Watchers wake at once for
/// a change of anything but `applied`, `commit` and `progress`, which they
/// see at most one tick late.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// The leader (0: unknown).
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Whether this node leads.
    pub is_leader: bool,
    /// This leader has applied an entry of its own term
    /// ([`crate::core::Core::caught_up_in_term`]).
    pub caught_up_in_term: bool,
    /// The cluster registry as applied here.
    pub cluster: ClusterMeta,
    /// Applied index.
    pub applied: u64,
    /// Commit index.
    pub commit: u64,
    /// Latest snapshot index.
    pub snapshot_index: u64,
    /// This node was removed from the cluster.
    pub removed: bool,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// The latest persistent error (cleared when it recovers).
    pub error: Option<String>,
    /// Fenced after auto-recovery: not voting until caught up.
    pub fenced: bool,
    /// The driver has stopped.
    pub stopped: bool,
    /// Until when this leader answers reads without a round
    /// ([`crate::core::Core::lease_until`]).
    pub lease_until: Option<Instant>,
    /// On the leader: each raft member's matched index and whether it was
    /// heard from recently (online). Empty on followers.
    pub progress: BTreeMap<u64, (u64, bool)>,
}

impl Status {
    /// Equal apart from the counters that move with every commit.
    fn same_but_counters(&self, other: &Status) -> bool {
        let Status {
            id,
            leader,
            term,
            is_leader,
            caught_up_in_term,
            cluster,
            applied: _,
            commit: _,
            snapshot_index,
            removed,
            snapshots_installed,
            error,
            fenced,
            stopped,
            progress: _,
            lease_until: _,
        } = self;
        (
            *id,
            *leader,
            *term,
            *is_leader,
            *caught_up_in_term,
            cluster,
            *snapshot_index,
            *removed,
            *snapshots_installed,
            error,
            *fenced,
            *stopped,
        ) == (
            other.id,
            other.leader,
            other.term,
            other.is_leader,
            other.caught_up_in_term,
            &other.cluster,
            other.snapshot_index,
            other.removed,
            other.snapshots_installed,
            &other.error,
            other.fenced,
            other.stopped,
        )
    }
}

/// Handle on a running driver.
pub struct DriverHandle {
    /// Commands.
    pub commands: Sender<Command>,
    /// Raft messages from peers.
    pub peer_messages: Sender<Message>,
    /// Latest status.
    pub status: watch::Receiver<Status>,
    /// Entries and fsyncs counters.
    pub stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DriverHandle {
    /// Stops the driver and waits for its threads (blocking).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Driver<S: State> {
    core: Core<S>,
    transport: Arc<dyn Transport>,
    persist: Sender<Job>,
    /// Shared with the persistence thread, which holds it while it writes.
    persister: Arc<Mutex<Persister>>,
    /// The highest ready number handed to the persistence thread and not
    /// yet reported durable (0: none).
    queued: u64,
    /// Written on this thread in the last dispatch: durable up to this.
    persisted_inline: Option<u64>,
    stats: Arc<Stats>,
    proposals: HashMap<u64, Reply>,
    reads: HashMap<u64, oneshot::Sender<Result<u64, ProposeError>>>,
    next_id: u64,
    status: watch::Sender<Status>,
    disk_error: Option<DiskFault>,
    peers_published: Vec<(u64, String)>,
    /// The status changed since watchers were last woken (only counters).
    unannounced: bool,
    /// The snapshot being written off this thread (one at a time).
    snapshot: Option<std::thread::JoinHandle<()>>,
    /// Tells the snapshot writer to give up (node stopping).
    snapshot_cancel: Arc<AtomicBool>,
    /// Where the snapshot writer reports.
    snapshot_done: (Sender<Input>, Receiver<Input>),
}

/// Starts the driver and persistence threads.
pub fn spawn<S: State>(
    core: Core<S>,
    persister: Persister,
    transport: Arc<dyn Transport>,
    feedback: Receiver<Feedback>,
    tick: Duration,
    status_tx: watch::Sender<Status>,
    stats: Arc<Stats>,
) -> std::io::Result<DriverHandle> {
    let (cmd_tx, cmd_rx) = bounded(QUEUE);
    let (peer_tx, peer_rx) = bounded(QUEUE);
    let (job_tx, job_rx) = unbounded();
    let (report_tx, report_rx) = unbounded();
    let status_rx = status_tx.subscribe();
    let mut core = core;
    core.set_stats(Arc::clone(&stats));
    let shutdown = persister.shutdown.clone();
    let persist_stats = stats.clone();
    let persister = Arc::new(Mutex::new(persister));
    let shared = Arc::clone(&persister);
    let persist_thread = std::thread::Builder::new()
        .name(format!("raft-persist-{}", core.id()))
        .spawn(move || Persister::run(&shared, job_rx, report_tx, persist_stats))?;
    let mut driver = Driver {
        core,
        transport,
        persist: job_tx,
        persister,
        queued: 0,
        persisted_inline: None,
        stats: Arc::clone(&stats),
        proposals: HashMap::new(),
        reads: HashMap::new(),
        next_id: 0,
        status: status_tx,
        disk_error: None,
        peers_published: Vec::new(),
        unannounced: false,
        snapshot: None,
        snapshot_cancel: Arc::new(AtomicBool::new(false)),
        snapshot_done: unbounded(),
    };
    let name = format!("raft-driver-{}", driver.core.id());
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        driver.run(cmd_rx, peer_rx, report_rx, feedback, tick, &shutdown);
        let _ = persist_thread.join();
    })?;
    Ok(DriverHandle {
        commands: cmd_tx,
        peer_messages: peer_tx,
        status: status_rx,
        stats,
        thread: Some(thread),
    })
}

impl<S: State> Driver<S> {
    fn run(
        &mut self,
        commands: Receiver<Command>,
        peers: Receiver<Message>,
        reports: Receiver<Report>,
        feedback: Receiver<Feedback>,
        tick: Duration,
        shutdown: &AtomicBool,
    ) {
        let mut next_tick = Instant::now() + tick;
        let mut actions = Vec::new();
        let mut stop_reply = None;
        self.publish_peers();
        self.publish(true);
        let snapshots = self.snapshot_done.1.clone();
        while stop_reply.is_none() {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(reports) -> r => if let Ok(r) = r { self.on_report(r, &mut actions) },
                recv(peers) -> m => if let Ok(m) = m { self.core.handle_input(Input::Step(m), &mut actions) },
                recv(commands) -> c => match c {
                    Ok(c) => stop_reply = self.on_command(c, &mut actions),
                    Err(_) => break,
                },
                recv(feedback) -> f => if let Ok(f) = f { self.on_feedback(f, &mut actions) },
                recv(snapshots) -> i => if let Ok(i) = i { self.core.handle_input(i, &mut actions) },
                default(timeout) => {},
            }
            // Drain what else is queued so one Ready (and one fsync) covers it.
            for _ in 0..QUEUE {
                let mut any = false;
                if let Ok(r) = reports.try_recv() {
                    self.on_report(r, &mut actions);
                    any = true;
                }
                if let Ok(m) = peers.try_recv() {
                    self.core.handle_input(Input::Step(m), &mut actions);
                    any = true;
                }
                if stop_reply.is_none() {
                    if let Ok(c) = commands.try_recv() {
                        stop_reply = self.on_command(c, &mut actions);
                        any = true;
                    }
                }
                if !any {
                    break;
                }
            }
            let now = Instant::now();
            let ticked = now >= next_tick;
            if ticked {
                self.core.handle_input(Input::Tick, &mut actions);
                next_tick += tick;
                if next_tick < now {
                    // Fell behind (a long apply or snapshot): do not burst ticks.
                    next_tick = now + tick;
                }
            }
            self.core.process_ready(&mut actions);
            // Status first: a caller woken by its result sees the state
            // that produced it.
            self.publish(ticked);
            self.dispatch(&mut actions);
            while let Some(n) = self.persisted_inline.take() {
                self.core.handle_input(Input::Persisted(n), &mut actions);
                self.core.process_ready(&mut actions);
                self.publish(false);
                self.dispatch(&mut actions);
            }
        }
        info!(id = self.core.id(), "driver stopping");
        self.snapshot_cancel.store(true, Ordering::Relaxed);
        if let Some(t) = self.snapshot.take() {
            let _ = t.join();
        }
        let _ = self.persist.send(Job::Stop);
        shutdown.store(true, Ordering::Relaxed);
        for (_, reply) in self.proposals.drain() {
            reply.send(Err(ProposeError::Failed("service stopped".into())));
        }
        for (_, tx) in self.reads.drain() {
            let _ = tx.send(Err(ProposeError::Failed("service stopped".into())));
        }
        // Wait (bounded) for the persistence thread to finish its queue.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match reports.recv_timeout(Duration::from_millis(100)) {
                Ok(Report::Stopped) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    break
                }
                _ => {}
            }
        }
        self.status.send_modify(|s| s.stopped = true);
        if let Some(reply) = stop_reply {
            let _ = reply.send(());
        }
    }

    fn on_report(&mut self, r: Report, actions: &mut Vec<Action>) {
        match r {
            Report::Persisted(n) => {
                if n >= self.queued {
                    self.queued = 0;
                }
                self.core.handle_input(Input::Persisted(n), actions)
            }
            Report::Error(e) => {
                let failed = e.is_some();
                self.disk_error = e;
                if failed {
                    self.core.handle_input(Input::DiskFailed, actions);
                }
            }
            Report::Stopped => {}
        }
    }

    fn on_feedback(&mut self, f: Feedback, actions: &mut Vec<Action>) {
        match f {
            Feedback::Unreachable(id) => self.core.handle_input(Input::Unreachable(id), actions),
            Feedback::Removed => self.core.handle_input(Input::RemovedByLeader, actions),
            Feedback::SnapshotSent { to, ok } => self
                .core
                .handle_input(Input::SnapshotSent { to, ok }, actions),
        }
    }

    fn on_command(&mut self, c: Command, actions: &mut Vec<Action>) -> Option<oneshot::Sender<()>> {
        match c {
            Command::Propose(p, tx) => {
                if let Some(e) = &self.disk_error {
                    // Refuse at once rather than queue behind a failing disk.
                    let err = if e.full {
                        ProposeError::DiskFull(e.message.clone())
                    } else {
                        ProposeError::StorageUnavailable(e.message.clone())
                    };
                    tx.send(Err(err));
                    return None;
                }
                self.next_id += 1;
                let id = self.next_id;
                self.proposals.insert(id, tx);
                self.core.handle_input(Input::Propose(id, p), actions);
            }
            Command::Read(tx) => {
                self.next_id += 1;
                let id = self.next_id;
                self.reads.insert(id, tx);
                self.core.handle_input(Input::Read(id), actions);
            }
            Command::TransferLeader(to) => {
                self.core.handle_input(Input::TransferLeader(to), actions)
            }
            Command::Campaign => self.core.handle_input(Input::Campaign, actions),
            Command::LearnPeer(id, address) => {
                let known = self.peers_published.iter().any(|(p, _)| *p == id);
                if self.core.fence().is_some() && !known && id != self.core.id() {
                    info!(peer = id, %address, "fenced: learned a peer's address from its messages");
                    self.peers_published.push((id, address));
                    self.transport.set_peers(self.peers_published.clone());
                }
            }
            Command::Stop(tx) => return Some(tx),
        }
        None
    }

    /// Makes a batch durable. The only voter writes it on this thread when
    /// nothing is queued for the persistence thread: no peer waits for its
    /// heartbeats meanwhile, and a commit then costs no hand-off to that
    /// thread and back (two thread switches of a single node's write). A
    /// failed write goes to the thread, which retries and reports it.
    fn persist(&mut self, batch: crate::core::PersistBatch) {
        if self.queued == 0 && self.disk_error.is_none() && self.core.is_sole_voter() {
            if let Ok(mut persister) = self.persister.try_lock() {
                if persister
                    .write(std::slice::from_ref(&batch), &self.stats)
                    .is_ok()
                {
                    self.persisted_inline = Some(batch.number);
                    return;
                }
            }
        }
        self.queued = self.queued.max(batch.number);
        if self.persist.send(Job::Batch(batch)).is_err() {
            warn!("persistence thread gone");
        }
    }

    fn dispatch(&mut self, actions: &mut Vec<Action>) {
        let mut membership = false;
        for action in actions.drain(..) {
            match action {
                Action::Send(m) if m.get_msg_type() == MessageType::MsgSnapshot => {
                    self.send_snapshot(m)
                }
                Action::Send(m) => self.transport.send(m),
                Action::Persist(b) => self.persist(b),
                Action::Compact(i) => {
                    let _ = self.persist.send(Job::Compact(i));
                }
                Action::Snapshot(job) => self.write_snapshot(job),
                Action::Resolve(id, r) => {
                    if let Some(reply) = self.proposals.remove(&id) {
                        reply.send(r);
                    }
                }
                Action::ReadDone(id, r) => {
                    if let Some(tx) = self.reads.remove(&id) {
                        let _ = tx.send(r);
                    }
                }
                Action::LeaderChanged { leader, term } => {
                    info!(id = self.core.id(), leader, term, "leader changed");
                }
                Action::MembershipChanged => membership = true,
                Action::Removed => warn!("removed from the cluster"),
            }
        }
        if membership {
            self.publish_peers();
        }
        // Callers whose receiver is gone (deadline passed) need no answer.
        self.proposals.retain(|_, reply| !reply.is_closed());
    }

    /// Hands a snapshot to the transport, which streams it off this thread.
    /// A metadata-only snapshot's image is frozen here, between applies.
    fn send_snapshot(&mut self, m: Message) {
        let meta = m.get_snapshot().get_metadata();
        match self.core.outgoing_snapshot(m.to, meta.term, meta.index) {
            Ok(snapshot) => self.transport.send_snapshot(m, snapshot),
            Err(e) => {
                warn!(to = m.to, index = meta.index, error = %e, "cannot send snapshot");
                let _ = self.snapshot_done.0.send(Input::SnapshotSent {
                    to: m.to,
                    ok: false,
                });
            }
        }
    }

    /// Writes a snapshot on its own thread: ticks, heartbeats, appends and
    /// applies go on meanwhile.
    fn write_snapshot(&mut self, job: SnapshotJob) {
        // The previous writer has reported (the core starts one at a time).
        if let Some(t) = self.snapshot.take() {
            let _ = t.join();
        }
        let store = self.core.snapshots().clone();
        let cancel = Arc::clone(&self.snapshot_cancel);
        let done = self.snapshot_done.0.clone();
        let index = job.header.index;
        let spawned =
            crate::background::spawn(format!("raft-snapshot-{}", self.core.id()), move || {
                let started = Instant::now();
                let result = job.write(&store, &cancel).map_err(|e| e.to_string());
                let took = started.elapsed();
                if took > Duration::from_secs(2) {
                    info!(index, secs = took.as_secs_f64(), "snapshot written");
                }
                let _ = done.send(Input::SnapshotWritten { result, took });
            });
        match spawned {
            Ok(t) => self.snapshot = Some(t),
            Err(e) => {
                let _ = self.snapshot_done.0.send(Input::SnapshotWritten {
                    result: Err(format!("cannot start the snapshot thread: {e}")),
                    took: Duration::ZERO,
                });
            }
        }
    }

    fn publish_peers(&mut self) {
        let peers: Vec<(u64, String)> = self
            .core
            .cluster()
            .nodes
            .values()
            .map(|n| (n.id, n.address.clone()))
            .collect();
        if peers != self.peers_published {
            self.transport.set_peers(peers.clone());
            self.peers_published = peers;
        }
    }

    /// Publishes the status. Watchers are woken at once when anything but
    /// the counters (applied, commit, progress) changed, and otherwise at
    /// most once a tick: those move with every commit, and waking every
    /// watcher for each would cost a thread wake-up per write.
    fn publish(&mut self, ticked: bool) {
        let core = &self.core;
        let status = Status {
            id: core.id(),
            leader: core.leader(),
            term: core.term(),
            is_leader: core.role() == StateRole::Leader,
            caught_up_in_term: core.caught_up_in_term(),
            cluster: core.cluster().clone(),
            applied: core.applied_index(),
            commit: core.commit_index(),
            snapshot_index: core.snapshot_index(),
            removed: core.is_removed(),
            snapshots_installed: core.snapshots_installed(),
            error: core
                .failure()
                .map(String::from)
                .or_else(|| self.disk_error.as_ref().map(|e| e.message.clone())),
            stopped: false,
            progress: core.progress(),
            fenced: core.fence().is_some(),
            lease_until: core.lease_until(),
        };
        let unannounced = &mut self.unannounced;
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            let now = changed && !s.same_but_counters(&status);
            if changed {
                *s = status;
            }
            *unannounced |= changed;
            let wake = now || (ticked && *unannounced);
            if wake {
                *unannounced = false;
            }
            wake
        });
    }
}
