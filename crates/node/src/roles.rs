//! Role policy: which member should hold which role, as a pure function of
//! the members (with their failure domains and weights), which of them are
//! online, the leader and the targets. Semantics of go-dqlite's
//! `app/roles.go` (`Adjust`, `Assume`, `Handover`): the leader applies one
//! change per round, trying the candidates in the order given.
//!
//! The task that applies the policy on the leader is [`crate::manager`].

use std::collections::{BTreeMap, BTreeSet};

use dqlite_wire::{NodeInfo, Role};

/// Below this many members only the leader votes (go-dqlite's
/// `minVoters`): two voters would make every single failure fatal. The
/// other node of a two-node cluster is a standby (go-dqlite: a spare).
pub const MIN_VOTERS: usize = 3;

/// How many voters and standbys the role manager keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// Target number of voters (go-dqlite's default: 3).
    pub voters: usize,
    /// Target number of standbys (go-dqlite's default: 3).
    pub standbys: usize,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            voters: 3,
            standbys: 3,
        }
    }
}

/// One role change to make: give `role` to the first of `candidates` for
/// which the change succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The role to assign.
    pub role: Role,
    /// Node ids, best first.
    pub candidates: Vec<u64>,
}

struct View<'a> {
    nodes: &'a [NodeInfo],
    online: &'a BTreeSet<u64>,
}

impl View<'_> {
    fn list(&self, role: Role, online: bool) -> Vec<&NodeInfo> {
        self.nodes
            .iter()
            .filter(|n| n.role == role && self.online.contains(&n.id) == online)
            .collect()
    }

    /// Candidates ranked: a failure domain not yet covered by `holders`
    /// first, then the lower weight, then the lower id (deterministic).
    fn ranked(&self, mut candidates: Vec<&NodeInfo>, holders: &[&NodeInfo]) -> Vec<u64> {
        let covered: BTreeSet<u64> = holders.iter().map(|n| n.failure_domain).collect();
        candidates.sort_by_key(|n| (covered.contains(&n.failure_domain), n.weight, n.id));
        candidates.iter().map(|n| n.id).collect()
    }
}

fn ids(nodes: Vec<&NodeInfo>, except: u64) -> Vec<u64> {
    nodes
        .into_iter()
        .filter(|n| n.id != except)
        .map(|n| n.id)
        .collect()
}

/// The next change the leader should make, if any.
pub fn adjust(
    nodes: &[NodeInfo],
    online: &BTreeSet<u64>,
    leader: u64,
    targets: Targets,
) -> Option<Change> {
    let view = View { nodes, online };
    if nodes.len() <= 1 {
        return None;
    }
    if nodes.len() < MIN_VOTERS {
        // Two members: the leader alone votes, so losing the other one
        // never costs the quorum. go-dqlite makes the other a spare; a
        // standby keeps a replica of the data at no cost to availability.
        let other = nodes
            .iter()
            .find(|n| n.id != leader && n.role == Role::Voter)?;
        return Some(Change {
            role: Role::StandBy,
            candidates: vec![other.id],
        });
    }
    let online_voters = view.list(Role::Voter, true);
    let online_standbys = view.list(Role::StandBy, true);
    let offline_voters = view.list(Role::Voter, false);
    let offline_standbys = view.list(Role::StandBy, false);

    if online_voters.len() < targets.voters {
        let mut candidates = view.list(Role::StandBy, true);
        candidates.extend(view.list(Role::Spare, true));
        if candidates.is_empty() {
            return None;
        }
        return Some(Change {
            role: Role::Voter,
            candidates: view.ranked(candidates, &online_voters),
        });
    }
    if online_voters.len() > targets.voters {
        // Demote one, never the leader.
        let candidates = ids(online_voters, leader);
        return (!candidates.is_empty()).then_some(Change {
            role: Role::Spare,
            candidates,
        });
    }
    if !offline_voters.is_empty() {
        return Some(Change {
            role: Role::Spare,
            candidates: ids(offline_voters, leader),
        });
    }
    if online_standbys.len() < targets.standbys {
        let candidates = view.list(Role::Spare, true);
        if candidates.is_empty() {
            return None;
        }
        return Some(Change {
            role: Role::StandBy,
            candidates: view.ranked(candidates, &online_standbys),
        });
    }
    if online_standbys.len() > targets.standbys {
        let candidates = ids(online_standbys, leader);
        return (!candidates.is_empty()).then_some(Change {
            role: Role::Spare,
            candidates,
        });
    }
    if !offline_standbys.is_empty() {
        return Some(Change {
            role: Role::Spare,
            candidates: ids(offline_standbys, leader),
        });
    }
    None
}

/// The role a node joining now should get: voter while online voters are
/// short of the target, then standby, else spare. Below [`MIN_VOTERS`]
/// members (counting the joiner) it stays a spare.
pub fn assume(nodes: &[NodeInfo], online: &BTreeSet<u64>, targets: Targets) -> Role {
    if nodes.len() + 1 < MIN_VOTERS {
        return Role::Spare;
    }
    let view = View { nodes, online };
    if view.list(Role::Voter, true).len() < targets.voters {
        Role::Voter
    } else if view.list(Role::StandBy, true).len() < targets.standbys {
        Role::StandBy
    } else {
        Role::Spare
    }
}

/// Who should take over the role of `id` (a voter or standby about to
/// leave), best first: online standbys then spares for a voter, online
/// spares for a standby. `None` when `id` holds neither role or nobody can.
pub fn handover(nodes: &[NodeInfo], online: &BTreeSet<u64>, id: u64) -> Option<Change> {
    let view = View { nodes, online };
    let me = nodes.iter().find(|n| n.id == id)?;
    if me.role == Role::Spare {
        return None;
    }
    let peers: Vec<&NodeInfo> = view
        .list(me.role, true)
        .into_iter()
        .filter(|n| n.id != id)
        .collect();
    let mut candidates = Vec::new();
    if me.role == Role::Voter {
        candidates.extend(view.list(Role::StandBy, true));
    }
    candidates.extend(view.list(Role::Spare, true));
    candidates.retain(|n| n.id != id);
    if candidates.is_empty() {
        return None;
    }
    // go-dqlite ranks standbys and spares together for a voter's handover;
    // a standby is caught up already, so it goes first among equals.
    let ranked = view.ranked(candidates, &peers);
    let role_of: BTreeMap<u64, Role> = nodes.iter().map(|n| (n.id, n.role)).collect();
    let (mut standbys, spares): (Vec<u64>, Vec<u64>) = ranked
        .into_iter()
        .partition(|c| role_of.get(c) == Some(&Role::StandBy));
    standbys.extend(spares);
    Some(Change {
        role: me.role,
        candidates: standbys,
    })
}

#[cfg(test)]
mod tests;
