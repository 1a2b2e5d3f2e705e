//! The cluster as the server's gateway sees it, over the consensus
//! service: leadership and membership from the replicated registry, the
//! read barrier, and the admin requests with dqlite's semantics.

use std::time::Duration;

use async_trait::async_trait;
use dqlite_consensus::{Error, Service, Status};
use dqlite_server::{Cluster, ClusterError};
use dqlite_wire::{NodeInfo, Role};
use tokio::sync::watch;
use tracing::{debug, info};

/// [`Cluster`] over a running consensus [`Service`].
pub struct RaftCluster {
    service: Service,
    /// This node's id (before it is a member, the one it was started with).
    id: u64,
    /// The failure domain it was started with.
    failure_domain: u64,
    address: String,
    /// How long a leadership transfer may take.
    transfer_timeout: Duration,
    /// How long a read barrier may take before this node counts as not
    /// leading: a few election timeouts.
    barrier_timeout: Duration,
    leadership: watch::Receiver<bool>,
}

/// The voter other than this node to hand leadership to: the most
/// up-to-date one among those the leader heard from recently, then any
/// other voter (raft-rs catches it up before handing over).
pub fn best_voter(status: &Status) -> Option<u64> {
    let voters = status
        .cluster
        .nodes
        .values()
        .filter(|n| n.id != status.id && n.role == Role::Voter);
    let online = voters
        .clone()
        .filter_map(|n| match status.progress.get(&n.id) {
            Some((matched, true)) => Some((*matched, std::cmp::Reverse(n.id))),
            _ => None,
        })
        .max()
        .map(|(_, std::cmp::Reverse(id))| id);
    online.or_else(|| voters.map(|n| n.id).next())
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
    pub fn new(
        service: Service,
        id: u64,
        address: String,
        failure_domain: u64,
        latency: Duration,
    ) -> Self {
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
            id,
            failure_domain,
            address,
            // One election timeout is at most 20 ticks; leave room for the
            // target to catch up first.
            transfer_timeout: (latency * 60).max(Duration::from_secs(2)),
            // An election timeout is at most 20 ticks: three of them cover
            // an election plus the new leader's first commit.
            barrier_timeout: (latency * 60).max(Duration::from_secs(1)),
            leadership: rx,
        }
    }

    fn member(&self, id: u64) -> Result<NodeInfo, ClusterError> {
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
            Some(n) => n.clone(),
            // Not (yet) a member: it knows nothing about the cluster.
            None => NodeInfo {
                id: if status.id == 0 { self.id } else { status.id },
                address: self.address.clone(),
                role: Role::Spare,
                failure_domain: self.failure_domain,
                weight: 0,
            },
        }
    }

    fn is_leader(&self) -> bool {
        self.service.is_leader()
    }

    fn leader(&self) -> Option<NodeInfo> {
        let status = self.service.status();
        status.cluster.nodes.get(&status.leader).cloned()
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.service.membership()
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
        let node = NodeInfo {
            id,
            address: address.to_string(),
            role: Role::Spare,
            ..Default::default()
        };
        self.service.set_member(node).await.map_err(map_err)?;
        info!(id, address, "node added as spare");
        Ok(())
    }

    async fn assign(&self, id: u64, role: Role) -> Result<(), ClusterError> {
        let node = self.member(id)?;
        if node.role == role {
            let name = match role {
                Role::Voter => "voter",
                Role::StandBy => "stand-by",
                Role::Spare => "spare",
            };
            return Err(ClusterError::Other(format!("server is already {name}")));
        }
        self.service
            .set_role(&node.address, role)
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
            best_voter(&status).ok_or_else(invalid)?
        } else {
            let node = status.cluster.nodes.get(&id).ok_or_else(invalid)?;
            if id == status.id || node.role != Role::Voter {
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

    fn metadata(&self) -> Option<(u64, u64)> {
        let status = self.service.status();
        status
            .cluster
            .nodes
            .get(&status.id)
            .map(|n| (n.failure_domain, n.weight))
    }

    async fn set_weight(&self, weight: u64) -> Result<(), ClusterError> {
        let status = self.service.status();
        let Some(me) = status.cluster.nodes.get(&status.id) else {
            // Not a member yet: the server keeps the value locally.
            return Ok(());
        };
        self.service
            .publish_metadata(me.failure_domain, weight)
            .await
            .map_err(map_err)
    }

    fn leadership(&self) -> Option<watch::Receiver<bool>> {
        Some(self.leadership.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(me: u64, voters: &[(u64, Option<(u64, bool)>)]) -> Status {
        let mut s = Status {
            id: me,
            is_leader: true,
            ..Status::default()
        };
        for (id, progress) in voters {
            let n = NodeInfo::new(*id, format!("n{id}"), Role::Voter);
            s.cluster.nodes.insert(*id, n);
            if let Some(p) = progress {
                s.progress.insert(*id, *p);
            }
        }
        s
    }

    #[test]
    fn transfer_zero_picks_the_most_up_to_date_online_voter() {
        let s = status(
            1,
            &[
                (1, Some((50, true))),
                (2, Some((40, true))),
                (3, Some((45, true))),
                (4, Some((49, false))),
            ],
        );
        assert_eq!(best_voter(&s), Some(3));
        // Ties go to the lower id.
        let s = status(
            1,
            &[
                (1, Some((9, true))),
                (5, Some((9, true))),
                (2, Some((9, true))),
            ],
        );
        assert_eq!(best_voter(&s), Some(2));
        // No progress known (not leading): any other voter.
        let s = status(1, &[(1, None), (2, None)]);
        assert_eq!(best_voter(&s), Some(2));
        let s = status(1, &[(1, None)]);
        assert_eq!(best_voter(&s), None);
    }
}
