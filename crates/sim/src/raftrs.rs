//! A reference node built directly on raft-rs's `RawNode` and `MemStorage`.
//!
//! Purpose: exercise the harness and the checkers end to end with a real
//! raft implementation while the consensus crate is being written, and
//! host a deliberately broken variant ([`Broken::AckBeforeCommit`]) proving
//! that the simulator catches a real bug. It follows raft-rs's Ready contract
//! in [`RaftRsNode::drain_ready`]. `MemStorage` stands for a disk on which
//! every append and hard-state write is fsynced before the Ready loop goes
//! on, so a crash keeps it whole; torn writes need the consensus adapter,
//! whose storage runs over [`SimDisk`](crate::disk::SimDisk).

use raft::eraftpb::{ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};

use crate::checker::invariants::{EntryView, NodeView};
use crate::checker::linearizability::{Command, Outcome};
use crate::disk::CrashMode;
use crate::kv::{KvMachine, KvRequest};
use crate::net::NodeId;
use crate::node::{Answer, Applied, Effects, MemberChange, ProposeError, SimNode};
use crate::rng::SimRng;
use crate::trace::{digest, fnv1a};

/// Deliberate bugs, for proving the checkers can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Correct behaviour.
    None,
    /// Acknowledge a write as soon as it is proposed, before it commits.
    AckBeforeCommit,
    /// Report log writes durable before their fsync, so votes and append
    /// acknowledgements leave first (consensus node only).
    SendBeforeFsync,
    /// The store applies an entry a second time on the node that built it
    /// (store node only: `dqlite_store::Broken::ApplyTwice`).
    ApplyTwice,
    /// The store applies stale entries, skipping the base check (store
    /// node only: `dqlite_store::Broken::SkipBaseCheck`).
    SkipBaseCheck,
    /// Read leases last three election timeouts, and a leader that stepped
    /// down in the same term still answers reads under its lease
    /// (consensus and store nodes; turns leases on).
    LongLease,
}

/// Election timeout in ticks; raft-rs randomizes in `[E, 2E)`.
pub const ELECTION_TICKS: usize = 10;
/// Heartbeat interval in ticks.
pub const HEARTBEAT_TICKS: usize = 2;

/// A raft-rs node with the reference key-value state machine.
pub struct RaftRsNode {
    id: NodeId,
    voters: Vec<NodeId>,
    broken: Broken,
    storage: MemStorage,
    raw: Option<RawNode<MemStorage>>,
    machine: KvMachine,
    /// Proposals this node accepted; answered when applied here.
    pending: std::collections::BTreeSet<u64>,
    /// The log as the checker sees it, mirrored on every append.
    log: Vec<EntryView>,
    /// `(term, role)` when the election timeout was last drawn.
    drawn_for: Option<(u64, StateRole)>,
}

/// The digest of an entry as the checkers compare it.
pub fn entry_digest(entry: &Entry) -> u64 {
    fnv1a(digest(&[entry.get_entry_type() as u8]), entry.get_data())
}

impl RaftRsNode {
    /// A node of a cluster whose initial voters are `voters`.
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        broken: Broken,
        rng: &mut SimRng,
    ) -> Result<Self, String> {
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
        let mut node = Self {
            id,
            voters: voters.to_vec(),
            broken,
            storage,
            raw: None,
            machine: KvMachine::new(),
            pending: Default::default(),
            log: Vec::new(),
            drawn_for: None,
        };
        node.boot(rng)?;
        Ok(node)
    }

    fn boot(&mut self, rng: &mut SimRng) -> Result<(), String> {
        let config = Config {
            id: self.id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied: 0,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 64,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw =
            RawNode::new(&config, self.storage.clone(), &logger).map_err(|e| e.to_string())?;
        self.raw = Some(raw);
        self.machine = KvMachine::new();
        self.pending.clear();
        self.drawn_for = None;
        self.redraw_election_timeout(rng);
        Ok(())
    }

    /// raft-rs draws its randomized election timeout from `thread_rng`; we
    /// overwrite it from the seed whenever raft reset it (a term or role
    /// change), which keeps runs reproducible.
    fn redraw_election_timeout(&mut self, rng: &mut SimRng) {
        let Some(raw) = self.raw.as_mut() else { return };
        let now = (raw.raft.term, raw.raft.state);
        if self.drawn_for != Some(now) {
            self.drawn_for = Some(now);
            let low = ELECTION_TICKS as u64;
            let timeout = rng.between(low, 2 * low - 1) as usize;
            raw.raft.set_randomized_election_timeout(timeout);
        }
    }

    fn append_to_log(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        // Entries from `first.index` on replace what was there (a conflict).
        self.log.truncate((first.index - 1) as usize);
        self.log.extend(entries.iter().map(|e| EntryView {
            term: e.term,
            digest: entry_digest(e),
        }));
    }

    fn apply(&mut self, entries: Vec<Entry>, fx: &mut Effects<Message>) {
        for entry in entries {
            fx.applied.push(Applied::Entry {
                index: entry.index,
                digest: entry_digest(&entry),
            });
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            // Entries are only ever written by our own clients; a record
            // that does not decode is skipped, and state-machine safety
            // would still catch nodes disagreeing about it.
            let Ok(request) = KvRequest::decode(&entry.data) else {
                continue;
            };
            let outcome = self.machine.apply(&request);
            if self.pending.remove(&request.op_id) {
                fx.answers.push((request.op_id, Answer::Done(outcome)));
            }
        }
    }

    /// Run the Ready loop until raft has nothing more to say, following the
    /// order raft-rs documents: send, snapshot, apply, append, hard state,
    /// persisted messages, advance, light ready.
    fn drain_ready(&mut self, rng: &mut SimRng, fx: &mut Effects<Message>) {
        self.redraw_election_timeout(rng);
        loop {
            let Some(raw) = self.raw.as_mut() else { return };
            if !raw.has_ready() {
                return;
            }
            let mut ready = raw.ready();
            for m in ready.take_messages() {
                fx.messages.push((m.to, m));
            }
            let committed = ready.take_committed_entries();
            let entries = ready.take_entries();
            let hard_state = ready.hs().cloned();
            let persisted = ready.take_persisted_messages();
            // MemStorage errors only on impossible indexes: a bug, so crash.
            {
                let mut store = self.storage.wl();
                store.append(&entries).expect("append to MemStorage");
                if let Some(hs) = hard_state {
                    store.set_hardstate(hs);
                }
            }
            self.append_to_log(&entries);
            self.apply(committed, fx);
            for m in persisted {
                fx.messages.push((m.to, m));
            }
            let Some(raw) = self.raw.as_mut() else { return };
            let mut light = raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.storage.wl().mut_hard_state().set_commit(commit);
            }
            for m in light.take_messages() {
                fx.messages.push((m.to, m));
            }
            let committed = light.take_committed_entries();
            self.apply(committed, fx);
            if let Some(raw) = self.raw.as_mut() {
                raw.advance_apply();
            }
            self.redraw_election_timeout(rng);
        }
    }
}

impl SimNode for RaftRsNode {
    type Message = Message;

    fn tick(&mut self, rng: &mut SimRng, fx: &mut Effects<Message>) {
        if let Some(raw) = self.raw.as_mut() {
            raw.tick();
        }
        self.drain_ready(rng, fx);
    }

    fn receive(&mut self, message: Message, rng: &mut SimRng, fx: &mut Effects<Message>) {
        if let Some(raw) = self.raw.as_mut() {
            // A stale or unknown message is raft's to ignore.
            let _ = raw.step(message);
        }
        self.drain_ready(rng, fx);
    }

    fn propose(
        &mut self,
        request: KvRequest,
        rng: &mut SimRng,
        fx: &mut Effects<Message>,
    ) -> Result<(), ProposeError> {
        let raw = self.raw.as_mut().ok_or(ProposeError::NotLeader)?;
        if raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader);
        }
        raw.propose(vec![], request.encode())
            .map_err(|_| ProposeError::NotLeader)?;
        if self.broken == Broken::AckBeforeCommit && matches!(request.command, Command::Write(_)) {
            fx.answers
                .push((request.op_id, Answer::Done(Outcome::Written)));
        } else {
            self.pending.insert(request.op_id);
        }
        self.drain_ready(rng, fx);
        Ok(())
    }

    fn transfer_leadership(&mut self, to: NodeId, rng: &mut SimRng, fx: &mut Effects<Message>) {
        if let Some(raw) = self.raw.as_mut() {
            if raw.raft.state == StateRole::Leader && self.voters.contains(&to) {
                raw.transfer_leader(to);
            }
        }
        self.drain_ready(rng, fx);
    }

    fn wake(&mut self, _token: u64, rng: &mut SimRng, fx: &mut Effects<Message>) {
        self.drain_ready(rng, fx);
    }

    fn change_membership(
        &mut self,
        _change: MemberChange,
        _rng: &mut SimRng,
        _fx: &mut Effects<Message>,
    ) -> Result<(), ProposeError> {
        Err(ProposeError::Refused(
            "the reference node has a fixed membership".into(),
        ))
    }

    fn members(&self) -> Vec<NodeId> {
        self.voters.clone()
    }

    fn view(&self) -> NodeView<'_> {
        let (term, is_leader, commit) = match &self.raw {
            Some(raw) => (
                raw.raft.term,
                raw.raft.state == StateRole::Leader,
                raw.raft.raft_log.committed,
            ),
            None => {
                let store = self.storage.rl();
                (store.hard_state().term, false, store.hard_state().commit)
            }
        };
        NodeView {
            id: self.id,
            term,
            is_leader,
            commit,
            first_index: self.storage.first_index().unwrap_or(1),
            entries: &self.log,
        }
    }

    fn crash(&mut self, _mode: CrashMode) {
        self.raw = None;
        self.pending.clear();
    }

    fn restart(&mut self, rng: &mut SimRng, fx: &mut Effects<Message>) -> Result<u64, String> {
        self.boot(rng)?;
        self.drain_ready(rng, fx);
        Ok(0)
    }

    fn describe(m: &Message) -> String {
        crate::trace::describe_raft(m)
    }
}
