//! What the harness needs from a simulated node.
//!
//! The cluster harness drives any [`SimNode`]: it delivers ticks, peer
//! messages, client requests and timer wake-ups, and collects the
//! [`Effects`] — messages to send, entries applied, client requests
//! answered, timers to set. An implementation wraps a real raft
//! implementation and its storage over the simulated disk; it must draw
//! every random choice from the [`SimRng`] it is handed.

use crate::checker::invariants::NodeView;
use crate::checker::linearizability::Outcome;
use crate::disk::CrashMode;
use crate::kv::KvRequest;
use crate::net::NodeId;
use crate::rng::SimRng;

/// A state-machine event, for the state-machine safety checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry at `index` was applied; `digest` identifies what was applied.
    Entry {
        /// Log index.
        index: u64,
        /// Hash of what was applied (equal on every node for one entry).
        digest: u64,
    },
    /// The state machine was replaced by a raft snapshot taken at `index`.
    Restored {
        /// The snapshot's index.
        index: u64,
    },
    /// After applying (or restoring) `index`, the state machine's whole
    /// image has this digest (equal on every node for one index).
    Image {
        /// Log index.
        index: u64,
        /// Digest of every database's bytes.
        digest: u64,
    },
}

/// How a client request ended, as far as its node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It executed with this outcome.
    Done(Outcome),
    /// It certainly never executed (refused before entering the log).
    Refused,
    /// It may or may not execute (leadership lost, timeout).
    Unknown,
}

/// Everything a node asked the world to do during one input.
#[derive(Debug)]
pub struct Effects<M> {
    /// Messages to send, with their destination.
    pub messages: Vec<(NodeId, M)>,
    /// State-machine events, in order.
    pub applied: Vec<Applied>,
    /// Client requests answered: `(operation id, answer)`.
    pub answers: Vec<(u64, Answer)>,
    /// Timers: call [`SimNode::wake`] with the token after the delay (ms),
    /// unless the node crashed meanwhile.
    pub timers: Vec<(u64, u64)>,
}

impl<M> Default for Effects<M> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            applied: Vec::new(),
            answers: Vec::new(),
            timers: Vec::new(),
        }
    }
}

/// A proposal refused before it entered the log: it certainly never executes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader (or is transferring leadership).
    #[error("not the leader")]
    NotLeader,
    /// The node refused for another reason, e.g. a membership change in flight.
    #[error("proposal refused: {0}")]
    Refused(String),
}

/// A membership change the harness asks the leader for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Add the node (it joins as a learner and is promoted once caught up).
    Add(NodeId),
    /// Remove the node.
    Remove(NodeId),
}

/// A node the harness can drive.
pub trait SimNode {
    /// A peer message.
    type Message: Clone;

    /// One clock tick.
    fn tick(&mut self, rng: &mut SimRng, fx: &mut Effects<Self::Message>);

    /// A message from a peer.
    fn receive(
        &mut self,
        message: Self::Message,
        rng: &mut SimRng,
        fx: &mut Effects<Self::Message>,
    );

    /// A timer set through [`Effects::timers`] fired.
    fn wake(&mut self, token: u64, rng: &mut SimRng, fx: &mut Effects<Self::Message>);

    /// Submit a client request; `Ok` means it may execute and an
    /// [`Answer`] may follow.
    fn propose(
        &mut self,
        request: KvRequest,
        rng: &mut SimRng,
        fx: &mut Effects<Self::Message>,
    ) -> Result<(), ProposeError>;

    /// Ask the node (if leader) to hand leadership to `to`.
    fn transfer_leadership(
        &mut self,
        to: NodeId,
        rng: &mut SimRng,
        fx: &mut Effects<Self::Message>,
    );

    /// Ask the node (if leader) for a membership change.
    fn change_membership(
        &mut self,
        change: MemberChange,
        rng: &mut SimRng,
        fx: &mut Effects<Self::Message>,
    ) -> Result<(), ProposeError>;

    /// The raft members (voters and learners) as this node applied them.
    fn members(&self) -> Vec<NodeId>;

    /// Whether this node learned it was removed from the cluster (a real
    /// node then shuts down).
    fn removed(&self) -> bool {
        false
    }

    /// The final read of a set or bank run, on a fresh connection: the
    /// set's elements or the accounts' balances as this node's state
    /// machine holds them, and the index it stands at. `None` if the node
    /// runs neither workload (or is down).
    fn final_read(&mut self) -> Option<(u64, Vec<u64>)> {
        None
    }

    /// The node's raft state for the invariant checker.
    fn view(&self) -> NodeView<'_>;

    /// Power cut: drop all volatile state; the disk keeps what `mode` says.
    fn crash(&mut self, mode: CrashMode);

    /// Boot again from the disk; returns the index the state machine stands
    /// at afterwards (it applies from there on).
    fn restart(&mut self, rng: &mut SimRng, fx: &mut Effects<Self::Message>)
        -> Result<u64, String>;

    /// A short description of a message for the trace.
    fn describe(message: &Self::Message) -> String;
}
