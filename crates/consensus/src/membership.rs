//! The service's replicated cluster registry: node ids, addresses and roles,
//! the allowed-member list and the node-id counter. It lives in the log (as
//! service entries and conf-change contexts) and in snapshot headers, never
//! in the application's [`crate::State`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use dqlite_wire::{NodeInfo, Role};

/// The replicated registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// Members by id.
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Addresses allowed to join (checked only when `allowlist_enabled`).
    pub allowed: BTreeSet<String>,
    /// Whether joins are restricted to `allowed`.
    pub allowlist_enabled: bool,
    /// The next id handed to a joiner that brings none.
    pub next_id: u64,
    /// Standbys the leader promotes to voter once they have caught up
    /// (joiners, and ASSIGN to voter of a node that is not one).
    #[serde(default)]
    pub promote: BTreeSet<u64>,
}

impl Default for ClusterMeta {
    fn default() -> Self {
        ClusterMeta {
            nodes: BTreeMap::new(),
            allowed: BTreeSet::new(),
            allowlist_enabled: false,
            next_id: 2,
            promote: BTreeSet::new(),
        }
    }
}

/// Service commands replicated as normal entries (tag [`crate::codec::TAG_SERVICE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceCommand {
    /// Hands out `next_id` and increments it (the result is the id).
    AllocateId,
    /// Adds an address to the allowed-member list.
    Allow(String),
    /// Removes an address from the allowed-member list.
    Disallow(String),
    /// Turns the allowed-member check on or off.
    SetAllowlist(bool),
    /// Offline recovery: force this exact membership (see `offline`).
    ForceMembership(Vec<NodeInfo>),
    /// A registry-only change (a node that is not in raft's configuration).
    SetMember(MemberChange),
}

/// The registry change carried in a conf change's context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Set (add or update) a node's entry.
    Set(NodeInfo),
    /// Forget a node.
    Remove(u64),
    /// Mark a standby for promotion to voter once caught up (after the
    /// `Set` that makes it a standby: `Set` clears the mark).
    Promote(u64),
}

impl ClusterMeta {
    /// Applies a service command; returns the value it produced (an id).
    pub fn apply(&mut self, cmd: &ServiceCommand) -> Option<u64> {
        match cmd {
            ServiceCommand::AllocateId => {
                let id = self.next_id;
                self.next_id += 1;
                return Some(id);
            }
            ServiceCommand::Allow(a) => {
                self.allowed.insert(a.clone());
            }
            ServiceCommand::Disallow(a) => {
                self.allowed.remove(a);
            }
            ServiceCommand::SetAllowlist(on) => self.allowlist_enabled = *on,
            ServiceCommand::SetMember(change) => self.apply_change(change),
            ServiceCommand::ForceMembership(nodes) => {
                self.nodes = nodes.iter().map(|n| (n.id, n.clone())).collect();
                self.promote.clear();
                self.bump_next_id();
            }
        }
        None
    }

    /// Applies a registry change from a conf change.
    pub fn apply_change(&mut self, change: &MemberChange) {
        match change {
            MemberChange::Set(n) => {
                self.nodes.insert(n.id, n.clone());
                self.promote.remove(&n.id);
                self.bump_next_id();
            }
            MemberChange::Remove(id) => {
                self.nodes.remove(id);
                self.promote.remove(id);
            }
            MemberChange::Promote(id) => {
                if self.nodes.get(id).is_some_and(|n| n.role == Role::StandBy) {
                    self.promote.insert(*id);
                }
            }
        }
    }

    fn bump_next_id(&mut self) {
        if let Some(max) = self.nodes.keys().max() {
            self.next_id = self.next_id.max(max + 1);
        }
    }

    /// The node with this address.
    pub fn by_address(&self, address: &str) -> Option<&NodeInfo> {
        self.nodes.values().find(|n| n.address == address)
    }

    /// Whether `address` may join.
    pub fn is_allowed(&self, address: &str) -> bool {
        !self.allowlist_enabled || self.allowed.contains(address)
    }
}
