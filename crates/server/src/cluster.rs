//! What the gateway needs to know about the cluster: who leads, who is a
//! member, and how to change membership. A single node is its own leader;
//! the replicated node implements the same trait over the consensus
//! service.

use async_trait::async_trait;
use dqlite_wire::error::{
    SQLITE_BUSY, SQLITE_ERROR, SQLITE_IOERR_LEADERSHIP_LOST, SQLITE_IOERR_NOT_LEADER,
};
use dqlite_wire::{NodeInfo, Role};

/// Why a cluster operation failed; each maps to one wire code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// This node is not the leader; retry on the leader.
    #[error("not leader")]
    NotLeader,
    /// Leadership was lost while the operation was in flight.
    #[error("leadership lost")]
    LeadershipLost,
    /// Another change is in progress; retry later.
    #[error("{0}")]
    Busy(String),
    /// Anything else, with a message for the user.
    #[error("{0}")]
    Other(String),
}

impl ClusterError {
    /// The FAILURE code for this error.
    pub fn code(&self) -> u64 {
        match self {
            ClusterError::NotLeader => SQLITE_IOERR_NOT_LEADER,
            ClusterError::LeadershipLost => SQLITE_IOERR_LEADERSHIP_LOST,
            ClusterError::Busy(_) => SQLITE_BUSY,
            ClusterError::Other(_) => SQLITE_ERROR,
        }
    }
}

/// The cluster as the gateway sees it.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This node.
    fn this_node(&self) -> NodeInfo;
    /// Whether this node is the leader now.
    fn is_leader(&self) -> bool;
    /// The current leader, if known.
    fn leader(&self) -> Option<NodeInfo>;
    /// Every member, in configuration order.
    fn nodes(&self) -> Vec<NodeInfo>;
    /// Waits until this node has applied everything committed before the
    /// call, confirmed with a quorum: reads after it are linearizable.
    async fn barrier(&self) -> Result<(), ClusterError>;
    /// Whether a statement may run before its barrier, with the barrier
    /// taken after it instead: true when this node leads and its state
    /// already holds every entry committed in earlier terms. A statement
    /// that commits an entry of its own needs no barrier at all (the
    /// commit proves the leadership it read under).
    fn barrier_after(&self) -> bool {
        false
    }
    /// How old this node's data may be: the time since the start of the
    /// last read barrier it completed, so its state reflects every write
    /// acknowledged before that instant (on this node's monotonic clock).
    /// `None`: no barrier completed yet. Bounded-stale follower reads
    /// compare it with their bound.
    fn staleness(&self) -> Option<std::time::Duration> {
        None
    }
    /// Adds a node as a spare.
    async fn add(&self, id: u64, address: &str) -> Result<(), ClusterError>;
    /// Changes a node's role.
    async fn assign(&self, id: u64, role: Role) -> Result<(), ClusterError>;
    /// Removes a node.
    async fn remove(&self, id: u64) -> Result<(), ClusterError>;
    /// Hands leadership to `id` (0: let the cluster choose).
    async fn transfer(&self, id: u64) -> Result<(), ClusterError>;
    /// This node's failure domain and weight as the replicated registry
    /// holds them (`None`: not recorded there; DESCRIBE then answers with
    /// the server's own values).
    fn metadata(&self) -> Option<(u64, u64)> {
        None
    }
    /// Records this node's weight where the cluster keeps its metadata
    /// (default: nowhere beyond the server's own value).
    async fn set_weight(&self, _weight: u64) -> Result<(), ClusterError> {
        Ok(())
    }
    /// Whether this node leads, as a channel that changes when leadership
    /// does. When it turns false, connections with an open database roll
    /// back their open transaction and stay open, answering NOT_LEADER
    /// (a statement in flight: LEADERSHIP_LOST). `None`: leadership never
    /// changes (a single node).
    fn leadership(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// `Some(message)` once this node has been removed from the cluster:
    /// every request is then refused with the message, which points the
    /// client to the remaining members. Called for every request: keep it
    /// cheap while the node is a member.
    fn removed(&self) -> Option<String> {
        None
    }
}

/// A one-node cluster: always the leader, membership fixed.
#[derive(Debug)]
pub struct SingleNode {
    node: NodeInfo,
}

impl SingleNode {
    /// A single voter with this id and address.
    pub fn new(id: u64, address: String) -> Self {
        Self {
            node: NodeInfo {
                id,
                address,
                role: Role::Voter,
                ..Default::default()
            },
        }
    }

    fn unsupported(what: &str) -> ClusterError {
        ClusterError::Other(format!(
            "{what} is not supported by a single-node dqlite-rs server: membership changes need the replicated cluster mode"
        ))
    }
}

#[async_trait]
impl Cluster for SingleNode {
    fn this_node(&self) -> NodeInfo {
        self.node.clone()
    }
    fn is_leader(&self) -> bool {
        true
    }
    fn leader(&self) -> Option<NodeInfo> {
        Some(self.node.clone())
    }
    fn nodes(&self) -> Vec<NodeInfo> {
        vec![self.node.clone()]
    }
    async fn barrier(&self) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn add(&self, _id: u64, _address: &str) -> Result<(), ClusterError> {
        Err(Self::unsupported("adding a node"))
    }
    async fn assign(&self, _id: u64, _role: Role) -> Result<(), ClusterError> {
        Err(Self::unsupported("assigning a role"))
    }
    async fn remove(&self, _id: u64) -> Result<(), ClusterError> {
        Err(Self::unsupported("removing a node"))
    }
    async fn transfer(&self, _id: u64) -> Result<(), ClusterError> {
        Err(Self::unsupported("transferring leadership"))
    }
}
