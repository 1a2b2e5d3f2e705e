//! What the harness needs from a simulated node.
//!
//! The cluster harness drives any [`SimNode`]: it delivers ticks, peer
//! messages and client proposals, and collects the [`Effects`] — messages
//! to send, entries applied, client requests resolved. An implementation
//! wraps a real raft implementation and its storage over the simulated disk;
//! it must draw every random choice from the [`SimRng`] it is handed.

use crate::checker::invariants::NodeView;
use crate::checker::linearizability::Outcome;
use crate::disk::CrashMode;
use crate::kv::KvRequest;
use crate::net::NodeId;
use crate::rng::SimRng;

/// Everything a node asked the world to do during one input.
#[derive(Debug)]
pub struct Effects<M> {
    /// Messages to send, with their destination.
    pub messages: Vec<(NodeId, M)>,
    /// Entries the state machine applied: `(index, digest)`.
    pub applied: Vec<(u64, u64)>,
    /// Client requests answered: `(operation id, outcome)`.
    pub resolved: Vec<(u64, Outcome)>,
}

impl<M> Default for Effects<M> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            applied: Vec::new(),
            resolved: Vec::new(),
        }
    }
}

/// A proposal refused before it entered the log: it certainly never executes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader (or is transferring leadership).
    #[error("not the leader")]
    NotLeader,
    /// The node refused for another reason, e.g. a full disk.
    #[error("proposal refused: {0}")]
    Refused(String),
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

    /// Propose a client request; `Ok` means it may execute (or may not, if
    /// leadership is lost before it commits).
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

    /// The node's raft state for the invariant checker.
    fn view(&self) -> NodeView<'_>;

    /// Power cut: drop all volatile state; the disk keeps what `mode` says.
    fn crash(&mut self, mode: CrashMode);

    /// Boot again from the disk; returns the index the state machine stands
    /// at afterwards (it re-applies from there).
    fn restart(&mut self, rng: &mut SimRng, fx: &mut Effects<Self::Message>)
        -> Result<u64, String>;

    /// A short description of a message for the trace.
    fn describe(message: &Self::Message) -> String;
}
