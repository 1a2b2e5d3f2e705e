//! The cluster as the server's gateway sees it, over the consensus
//! service: leadership and membership from the replicated registry, the
//! read barrier, and the admin requests with dqlite's semantics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Set once the service reports this node removed from the cluster.
    removed: Arc<AtomicBool>,
    /// When the newest read barrier that completed here started: the
    /// State holds every write acknowledged before then.
    confirmed: Mutex<Option<Instant>>,
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
        let removed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&removed);
        tokio::spawn(async move {
            loop {
                let (leads, gone) = {
                    let s = status.borrow_and_update();
                    (s.is_leader, s.removed)
                };
                flag.store(gone, Ordering::Relaxed);
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
            removed,
            confirmed: Mutex::new(None),
        }
    }

    fn member(&self, id: u64) -> Result<NodeInfo, ClusterError> {
        member(&self.service.status().cluster.nodes, id).cloned()
    }
}

type Members = BTreeMap<u64, NodeInfo>;

/// What clients of a removed node are told: where to go instead.
fn removed_message(id: u64, address: &str, nodes: &Members) -> String {
    let others: Vec<&str> = nodes
        .values()
        .filter(|n| n.id != id)
        .map(|n| n.address.as_str())
        .collect();
    if others.is_empty() {
        format!("node {id} ({address}) was removed from the cluster and serves no clients")
    } else {
        format!(
            "node {id} ({address}) was removed from the cluster; connect to its members instead: {}",
            others.join(", ")
        )
    }
}

/// "1, 2, 3": the ids a user could have meant.
fn member_ids(nodes: &Members) -> String {
    let ids: Vec<String> = nodes.keys().map(u64::to_string).collect();
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Voter => "voter",
        Role::StandBy => "stand-by",
        Role::Spare => "spare",
    }
}

/// The member with this id, or an error listing the ids there are.
fn member(nodes: &Members, id: u64) -> Result<&NodeInfo, ClusterError> {
    nodes.get(&id).ok_or_else(|| {
        ClusterError::Other(format!(
            "no node with id {id}; members are {}",
            member_ids(nodes)
        ))
    })
}

/// Checks an ADD against the membership.
fn check_add(nodes: &Members, id: u64, address: &str) -> Result<(), ClusterError> {
    if id == 0 {
        return Err(ClusterError::Other(
            "node id 0 is not valid: give the node a non-zero id".into(),
        ));
    }
    if let Some(n) = nodes.get(&id) {
        return Err(ClusterError::Other(format!(
            "node id {id} is already in use by {}; pick another id",
            n.address
        )));
    }
    if let Some(n) = nodes.values().find(|n| n.address == address) {
        return Err(ClusterError::Other(format!(
            "address {address} is already used by node {}; remove that node first",
            n.id
        )));
    }
    Ok(())
}

/// Checks an ASSIGN: the node exists and does not have the role yet.
fn check_assign(nodes: &Members, id: u64, role: Role) -> Result<NodeInfo, ClusterError> {
    let node = member(nodes, id)?;
    if node.role == role {
        return Err(ClusterError::Other(format!(
            "node {id} is already a {}",
            role_name(role)
        )));
    }
    Ok(node.clone())
}

/// The node a TRANSFER hands leadership to: `id`, or for 0 any other
/// voter. `leader` is this node, which leads (the gateway checked).
fn transfer_target(nodes: &Members, leader: u64, id: u64) -> Result<u64, ClusterError> {
    if id == 0 {
        // raft picks the most up-to-date voter; any other voter is a
        // valid choice, and raft-rs catches it up before handing over.
        return nodes
            .values()
            .find(|n| n.id != leader && n.role == Role::Voter)
            .map(|n| n.id)
            .ok_or_else(|| {
                ClusterError::Other(format!(
                    "no other voter to transfer leadership to; members are {}",
                    member_ids(nodes)
                ))
            });
    }
    let node = member(nodes, id)?;
    if id == leader {
        return Err(ClusterError::Other(format!(
            "node {id} is already the leader"
        )));
    }
    if node.role != Role::Voter {
        return Err(ClusterError::Other(format!(
            "node {id} is a {}, and only voters can lead; assign it the voter role first",
            role_name(node.role)
        )));
    }
    Ok(id)
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

    fn staleness(&self) -> Option<Duration> {
        let confirmed = *self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        confirmed.map(|at| at.elapsed())
    }

    fn barrier_after(&self) -> bool {
        self.service.caught_up_in_term()
    }

    fn leader(&self) -> Option<NodeInfo> {
        let status = self.service.status();
        status.cluster.nodes.get(&status.leader).cloned()
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.service.membership()
    }

    async fn barrier(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        match self.service.wait_read(self.barrier_timeout).await {
            Ok(()) => {
                // The read index was taken after `started`, so it covers
                // every write acknowledged before it.
                let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
                *confirmed = (*confirmed).max(Some(started));
                Ok(())
            }
            // Leadership could not be confirmed with a quorum in time.
            // Nothing was written (a statement that ran before its barrier
            // committed nothing, or it would need none), so NOT_LEADER is
            // exact: the client may retry wherever the leader is now.
            Err(Error::Timeout | Error::LeadershipLost | Error::NotLeader { .. }) => {
                Err(ClusterError::NotLeader)
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn add(&self, id: u64, address: &str) -> Result<(), ClusterError> {
        check_add(&self.service.status().cluster.nodes, id, address)?;
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
        let node = check_assign(&self.service.status().cluster.nodes, id, role)?;
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
        let target = match (id, best_voter(&status)) {
            // The most up-to-date online voter.
            (0, Some(best)) => best,
            _ => transfer_target(&status.cluster.nodes, status.id, id)?,
        };
        let result = self
            .service
            .transfer_leadership(target, self.transfer_timeout)
            .await;
        debug!(target, ?result, "leadership transfer finished");
        // As dqlite: success means this node no longer leads.
        if self.service.is_leader() {
            return Err(ClusterError::Other(format!(
                "leadership did not move to node {target} within {:?}; node {} still leads: \
                 retry, or check that node {target} is running and caught up",
                self.transfer_timeout, status.id
            )));
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

    fn removed(&self) -> Option<String> {
        if !self.removed.load(Ordering::Relaxed) {
            return None;
        }
        let status = self.service.status();
        Some(removed_message(
            status.id,
            &self.address,
            &status.cluster.nodes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role as R;

    fn members(spec: &[(u64, R)]) -> Members {
        spec.iter()
            .map(|&(id, role)| {
                let node = NodeInfo::new(id, format!("127.0.0.1:{}", 9000 + id), role);
                (id, node)
            })
            .collect()
    }

    fn text<T: std::fmt::Debug>(r: Result<T, ClusterError>) -> String {
        r.expect_err("an error").to_string()
    }

    #[test]
    fn transfer_targets_and_their_errors() {
        let three = members(&[(1, R::Voter), (2, R::Voter), (3, R::Voter)]);
        let mixed = members(&[(1, R::Voter), (2, R::StandBy), (3, R::Spare)]);
        // (members, leader, requested id, expected target or error text)
        let table: &[(&Members, u64, u64, Result<u64, &str>)] = &[
            (&three, 3, 1, Ok(1)),
            (&three, 3, 0, Ok(1)),
            (&three, 3, 3, Err("node 3 is already the leader")),
            (&three, 3, 7, Err("no node with id 7; members are 1, 2, 3")),
            (
                &mixed,
                1,
                2,
                Err("node 2 is a stand-by, and only voters can lead; assign it the voter role first"),
            ),
            (
                &mixed,
                1,
                0,
                Err("no other voter to transfer leadership to; members are 1, 2, 3"),
            ),
        ];
        for (nodes, leader, id, want) in table {
            let got = transfer_target(nodes, *leader, *id);
            match want {
                Ok(target) => assert_eq!(got.ok(), Some(*target), "transfer {id}"),
                Err(msg) => assert_eq!(text(got), *msg, "transfer {id}"),
            }
        }
    }

    #[test]
    fn assign_add_and_remove_say_what_was_wrong() {
        let nodes = members(&[(1, R::Voter), (2, R::Voter), (3, R::Spare)]);
        assert_eq!(
            text(check_assign(&nodes, 7, R::Voter)),
            "no node with id 7; members are 1, 2, 3"
        );
        assert_eq!(
            text(check_assign(&nodes, 2, R::Voter)),
            "node 2 is already a voter"
        );
        assert_eq!(
            check_assign(&nodes, 3, R::Voter).map(|n| n.id).ok(),
            Some(3)
        );
        assert_eq!(
            text(member(&nodes, 9)),
            "no node with id 9; members are 1, 2, 3"
        );
        assert_eq!(
            text(check_add(&nodes, 0, "127.0.0.1:9")),
            "node id 0 is not valid: give the node a non-zero id"
        );
        assert_eq!(
            text(check_add(&nodes, 2, "127.0.0.1:9")),
            "node id 2 is already in use by 127.0.0.1:9002; pick another id"
        );
        assert_eq!(
            text(check_add(&nodes, 4, "127.0.0.1:9001")),
            "address 127.0.0.1:9001 is already used by node 1; remove that node first"
        );
        assert!(check_add(&nodes, 4, "127.0.0.1:9004").is_ok());
    }

    #[test]
    fn a_removed_node_points_to_the_members() {
        let nodes = members(&[(1, R::Voter), (2, R::Voter)]);
        assert_eq!(
            removed_message(3, "127.0.0.1:9003", &nodes),
            "node 3 (127.0.0.1:9003) was removed from the cluster; \
             connect to its members instead: 127.0.0.1:9001, 127.0.0.1:9002"
        );
    }

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
