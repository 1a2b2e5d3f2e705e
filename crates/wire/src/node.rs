//! The one cluster-member type of the workspace: the wire's SERVERS entries,
//! the consensus registry, the role manager and the tools all use
//! [`NodeInfo`] and [`Role`] (with the `serde` feature, the registry stores
//! them as they are).

/// A node's role, with its wire code (§9.1). Raft's own numbering differs
/// and must never leak onto the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    /// Replicates the log and votes.
    Voter,
    /// Replicates the log, does not vote (a raft learner).
    // The registry has always stored this variant as "Standby".
    #[cfg_attr(feature = "serde", serde(rename = "Standby"))]
    StandBy,
    /// Known to the cluster, takes no part in raft.
    #[default]
    Spare,
}

impl Role {
    /// The wire code.
    pub fn code(self) -> u64 {
        match self {
            Role::Voter => 0,
            Role::StandBy => 1,
            Role::Spare => 2,
        }
    }

    /// The role for a wire code, if defined.
    pub fn from_code(code: u64) -> Option<Role> {
        match code {
            0 => Some(Role::Voter),
            1 => Some(Role::StandBy),
            2 => Some(Role::Spare),
            _ => None,
        }
    }

    /// The lower-case name, as the shells print it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::StandBy => "stand-by",
            Role::Spare => "spare",
        }
    }
}

/// One cluster member. SERVERS responses carry `id`, `address` and `role`
/// (decoded metadata is 0); DESCRIBE carries a node's `failure_domain` and
/// `weight`; the replicated registry holds all of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeInfo {
    /// Node id.
    pub id: u64,
    /// Address clients and peers dial.
    pub address: String,
    /// Role (sent only in format 1; decoded as voter from format 0).
    pub role: Role,
    /// Failure domain: the role manager spreads voters and standbys over
    /// distinct domains.
    #[cfg_attr(feature = "serde", serde(default))]
    pub failure_domain: u64,
    /// Weight set by WEIGHT: among equal candidates the role manager
    /// prefers the lower weight.
    #[cfg_attr(feature = "serde", serde(default))]
    pub weight: u64,
}

impl NodeInfo {
    /// A member with no metadata (failure domain and weight 0).
    pub fn new(id: u64, address: impl Into<String>, role: Role) -> NodeInfo {
        NodeInfo {
            id,
            address: address.into(),
            role,
            failure_domain: 0,
            weight: 0,
        }
    }
}
