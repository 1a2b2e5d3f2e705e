//! The cluster as the server's gateway sees it, over the consensus
//! service: leadership and membership from the replicated registry, the
//! read barrier, and the admin requests with dqlite's semantics.

use std::time::Duration;

use async_trait::async_trait;
use dqlite_consensus::core::{MemberRequest, Proposal};
use dqlite_consensus::{Error, Service};
use dqlite_server::{Cluster, ClusterError};
use dqlite_wire::{NodeInfo, Role};
use tokio::sync::watch;
use tracing::{debug, info};

/// [`Cluster`] over a running consensus [`Service`].
pub struct RaftCluster {
    service: Service,
    address: String,
    /// How long a barrier or a membership change may take.
    timeout: Duration,
    /// How long a leadership transfer may take.
    transfer_timeout: Duration,
    /// How long a read barrier may take before this node counts as not
    /// leading: a few election timeouts.
    barrier_timeout: Duration,
    leadership: watch::Receiver<bool>,
}

fn wire_role(role: dqlite_consensus::Role) -> Role {
    match role {
        dqlite_consensus::Role::Voter => Role::Voter,
        dqlite_consensus::Role::Standby => Role::StandBy,
        dqlite_consensus::Role::Spare => Role::Spare,
    }
}

fn raft_role(role: Role) -> dqlite_consensus::Role {
    match role {
        Role::Voter => dqlite_consensus::Role::Voter,
        Role::StandBy => dqlite_consensus::Role::Standby,
        Role::Spare => dqlite_consensus::Role::Spare,
    }
}

fn wire_node(n: &dqlite_consensus::NodeInfo) -> NodeInfo {
    NodeInfo {
        id: n.id,
        address: n.address.clone(),
        role: wire_role(n.role),
    }
}

/// Maps service errors to the wire contract: not leader → 10250, lost
/// leadership → 10506, a concurrent change → SQLITE_BUSY, the rest → 1.
fn map_err(e: Error) -> ClusterError {
    match e {
        Error::NotLeader { .. } => ClusterError::NotLeader,
        Error::LeadershipLost => ClusterError::LeadershipLost,
        Error::ConfChangeInProgress | Error::Busy => ClusterError::Busy(e.to_string()),
        other => ClusterError::Other(other.to_string()),
    }
}

impl RaftCluster {
    /// The cluster of the node at `address` (its advertised address),
    /// served by `service`. Must be called inside a tokio runtime: a task
    /// follows the service's leadership.
    pub fn new(service: Service, address: String, latency: Duration) -> Self {
        let (tx, rx) = watch::channel(service.is_leader());
        let mut status = service.watch();
        tokio::spawn(async move {
            loop {
                let leads = status.borrow_and_update().is_leader;
                tx.send_if_modified(|v| std::mem::replace(v, leads) != leads);
                if status.changed().await.is_err() || tx.is_closed() {
                    break;
                }
            }
        });
        RaftCluster {
            service,
            address,
            timeout: Duration::from_secs(10),
            // One election timeout is at most 20 ticks; leave room for the
            // target to catch up first.
            transfer_timeout: (latency * 60).max(Duration::from_secs(2)),
            // An election timeout is at most 20 ticks: three of them cover
            // an election plus the new leader's first commit.
            barrier_timeout: (latency * 60).max(Duration::from_secs(1)),
            leadership: rx,
        }
    }

    fn member(&self, id: u64) -> Result<dqlite_consensus::NodeInfo, ClusterError> {
        self.service
            .status()
            .cluster
            .nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| ClusterError::Other("Resource not found".into()))
    }
}

#[async_trait]
impl Cluster for RaftCluster {
    fn this_node(&self) -> NodeInfo {
        let status = self.service.status();
        match status.cluster.nodes.get(&status.id) {
            Some(n) => wire_node(n),
            // Not (yet) a member: it knows nothing about the cluster.
            None => NodeInfo {
                id: status.id,
                address: self.address.clone(),
                role: Role::Spare,
            },
        }
    }

    fn is_leader(&self) -> bool {
        self.service.is_leader()
    }

    fn barrier_after(&self) -> bool {
        self.service.caught_up_in_term()
    }

    fn leader(&self) -> Option<NodeInfo> {
        let status = self.service.status();
        status.cluster.nodes.get(&status.leader).map(wire_node)
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.service.membership().iter().map(wire_node).collect()
    }

    async fn barrier(&self) -> Result<(), ClusterError> {
        match self.service.wait_read(self.barrier_timeout).await {
            Ok(()) => Ok(()),
            // Leadership could not be confirmed with a quorum in time.
            // Nothing has run yet, so NOT_LEADER is exact: the client may
            // retry wherever the cluster's leader is now.
            Err(Error::Timeout | Error::LeadershipLost | Error::NotLeader { .. }) => {
                Err(ClusterError::NotLeader)
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn add(&self, id: u64, address: &str) -> Result<(), ClusterError> {
        if id == 0 {
            return Err(ClusterError::Other("server ID is not valid".into()));
        }
        let status = self.service.status();
        if status.cluster.nodes.contains_key(&id) {
            return Err(ClusterError::Other("server ID already in use".into()));
        }
        if status.cluster.by_address(address).is_some() {
            return Err(ClusterError::Other("server address already in use".into()));
        }
        // As dqlite: a new node starts as a spare; ASSIGN gives it a role.
        let node = dqlite_consensus::NodeInfo {
            id,
            address: address.to_string(),
            role: dqlite_consensus::Role::Spare,
            promote: false,
        };
        self.service
            .propose(Proposal::Member(MemberRequest::Set(node)), self.timeout)
            .await
            .map_err(map_err)?;
        info!(id, address, "node added as spare");
        Ok(())
    }

    async fn assign(&self, id: u64, role: Role) -> Result<(), ClusterError> {
        let node = self.member(id)?;
        if node.role == raft_role(role) {
            let name = match role {
                Role::Voter => "voter",
                Role::StandBy => "stand-by",
                Role::Spare => "spare",
            };
            return Err(ClusterError::Other(format!("server is already {name}")));
        }
        self.service
            .set_role(&node.address, raft_role(role))
            .await
            .map_err(map_err)?;
        info!(id, ?role, "role assigned");
        Ok(())
    }

    async fn remove(&self, id: u64) -> Result<(), ClusterError> {
        let node = self.member(id)?;
        self.service.evict(&node.address).await.map_err(map_err)?;
        info!(id, "node removed");
        Ok(())
    }

    async fn transfer(&self, id: u64) -> Result<(), ClusterError> {
        let status = self.service.status();
        let invalid = || ClusterError::Other("server ID is not valid".into());
        let target = if id == 0 {
            // raft picks the most up-to-date voter; any other voter is a
            // valid choice, and raft-rs catches it up before handing over.
            status
                .cluster
                .nodes
                .values()
                .find(|n| n.id != status.id && n.role == dqlite_consensus::Role::Voter)
                .map(|n| n.id)
                .ok_or_else(invalid)?
        } else {
            let node = status.cluster.nodes.get(&id).ok_or_else(invalid)?;
            if id == status.id || node.role != dqlite_consensus::Role::Voter {
                return Err(invalid());
            }
            id
        };
        let result = self
            .service
            .transfer_leadership(target, self.transfer_timeout)
            .await;
        debug!(target, ?result, "leadership transfer finished");
        // As dqlite: success means this node no longer leads.
        if self.service.is_leader() {
            return Err(ClusterError::Other("leadership transfer failed".into()));
        }
        Ok(())
    }

    fn leadership(&self) -> Option<watch::Receiver<bool>> {
        Some(self.leadership.clone())
    }
}
