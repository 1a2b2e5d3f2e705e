//! Offline helpers over a stopped node's data directory.
//!
//! - [`read_last_entry_info`] tells which node has the most recent log, to
//!   pick the survivor when quorum is lost; it never modifies anything.
//! - [`reconfigure_membership`] appends one configuration entry that forces
//!   a new membership, so the node restarts into it (e.g. a single voter)
//!   and can serve writes again without the lost nodes.

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType};

use crate::codec;
use crate::membership::{NodeInfo, Role, ServiceCommand};
use crate::storage::{
    self, log, meta, Disk, Log, LogOptions, MetaFile, MetaState, SnapshotStore, StorageError,
};

/// The position of a node's last log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastEntryInfo {
    /// Term of the last entry.
    pub term: u64,
    /// Index of the last entry.
    pub index: u64,
}

impl Ord for LastEntryInfo {
    /// A log is more recent when its last term is higher, or with equal
    /// terms when it is longer (raft's up-to-date rule).
    fn cmp(&self, other: &Self) -> Ordering {
        (self.term, self.index).cmp(&(other.term, other.index))
    }
}

impl PartialOrd for LastEntryInfo {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Errors of the offline helpers.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Reading or writing the directory failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The directory holds no node.
    #[error("no raft state in this directory")]
    Empty,
    /// The requested membership is unusable.
    #[error("invalid membership: {0}")]
    Invalid(String),
}

/// The term and index of the last entry in a stopped node's log (or of its
/// snapshot when the log is empty). Reads only; never modifies the directory.
pub fn read_last_entry_info(
    disk: Arc<dyn Disk>,
    data_dir: &Path,
) -> Result<LastEntryInfo, OfflineError> {
    let raft_dir = storage::raft_dir(data_dir);
    let snapshots = SnapshotStore::read_only(disk.clone(), &raft_dir);
    let snapshot = snapshots.latest(false)?;
    let (mut term, mut index) = snapshot.map_or((0, 0), |s| (s.header.term, s.header.index));
    if let Some(last) = log::read_only(disk.as_ref(), &raft_dir, index)?.last() {
        term = last.term;
        index = last.index;
    }
    Ok(LastEntryInfo { term, index })
}

/// Appends one entry forcing membership `nodes` and marks it committed, so
/// the node restarts into exactly that membership. Use on the survivor of a
/// cluster that lost quorum; the directory must belong to a stopped node
/// that is one of `nodes`.
pub fn reconfigure_membership(
    disk: Arc<dyn Disk>,
    data_dir: &Path,
    nodes: Vec<NodeInfo>,
) -> Result<LastEntryInfo, OfflineError> {
    let raft_dir = storage::raft_dir(data_dir);
    let st = meta::read_meta(disk.as_ref(), &raft_dir)?.ok_or(OfflineError::Empty)?;
    if st.id == 0 {
        return Err(OfflineError::Empty);
    }
    if !nodes.iter().any(|n| n.id == st.id && n.role == Role::Voter) {
        return Err(OfflineError::Invalid(format!(
            "node {} must be a voter in the new membership",
            st.id
        )));
    }
    let last = read_last_entry_info(disk.clone(), data_dir)?;
    let options = LogOptions {
        auto_recovery: false,
        ..Default::default()
    };
    let snapshot_index = SnapshotStore::read_only(disk.clone(), &raft_dir)
        .latest(false)?
        .map_or(0, |s| s.header.index);
    let (mut log, _) = Log::open(disk.clone(), &raft_dir, options, snapshot_index)?;
    let term = last.term.max(1);
    let entry = Entry {
        entry_type: EntryType::EntryNormal,
        index: last.index + 1,
        term,
        data: codec::service_entry(&ServiceCommand::ForceMembership(nodes)).into(),
        ..Default::default()
    };
    log.append(std::slice::from_ref(&entry))?;
    log.sync()?;
    let mut meta = MetaFile::open(disk.as_ref(), &raft_dir)?;
    let path = raft_dir.join("meta");
    let io = |e| StorageError::io(&path, e);
    meta.write(MetaState {
        id: st.id,
        term: st.term.max(term),
        vote: st.vote,
        commit: entry.index,
    })
    .map_err(io)?;
    meta.sync().map_err(io)?;
    Ok(LastEntryInfo {
        term,
        index: entry.index,
    })
}

/// Makes a copy of another member's directory this node's own: the raft id
/// becomes `id` and the copied vote is dropped; the log, snapshots and
/// membership stay as copied. The recovery step after
/// [`reconfigure_membership`]: copy the reconfigured directory to each
/// other surviving member, then adopt it there, so every member restarts
/// from the same log.
pub fn adopt_copy(disk: Arc<dyn Disk>, data_dir: &Path, id: u64) -> Result<(), OfflineError> {
    if id == 0 {
        return Err(OfflineError::Invalid("node id 0 is not valid".into()));
    }
    let raft_dir = storage::raft_dir(data_dir);
    let st = meta::read_meta(disk.as_ref(), &raft_dir)?.ok_or(OfflineError::Empty)?;
    let mut meta = MetaFile::open(disk.as_ref(), &raft_dir)?;
    let path = raft_dir.join("meta");
    let io = |e| StorageError::io(&path, e);
    // The vote was the source node's; a vote for nobody is always safe.
    meta.write(MetaState {
        id,
        term: st.term,
        vote: 0,
        commit: st.commit,
    })
    .map_err(io)?;
    meta.sync().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_entry_info_orders_by_term_then_index() {
        let a = LastEntryInfo {
            term: 2,
            index: 100,
        };
        let b = LastEntryInfo { term: 3, index: 5 };
        let c = LastEntryInfo { term: 3, index: 6 };
        assert!(a < b && b < c);
        assert_eq!([c, a, b].iter().max(), Some(&c));
    }
}
