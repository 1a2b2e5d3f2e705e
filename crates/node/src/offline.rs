//! Recovery helpers over a stopped node's data directory (go-dqlite's
//! `ReadLastEntryInfo` and `ReconfigureMembershipExt`).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use dqlite_consensus::offline::{self, LastEntryInfo};
use dqlite_consensus::storage::RealDisk;
use dqlite_wire::NodeInfo;

use crate::NodeError;

/// Refuses a directory that has never held a node (missing, or without
/// the `node.json` every started node writes), rather than reading an
/// empty log from it.
fn require_node(dir: &Path) -> Result<(), NodeError> {
    let missing = |reason| NodeError::NotANode {
        dir: dir.display().to_string(),
        reason,
    };
    if !dir.is_dir() {
        return Err(missing("no such directory"));
    }
    if !dir.join("node.json").is_file() {
        return Err(missing("no node.json in it"));
    }
    Ok(())
}

/// Holds the directory's lock so that no node starts on it meanwhile.
/// A directory without a lock file has never held a node: nothing to lock.
fn lock(dir: &Path) -> Result<Option<std::fs::File>, NodeError> {
    let path = dir.join("lock");
    let file = match OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(NodeError::Misuse(format!(
                "cannot open {}: {e}",
                path.display()
            )))
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(NodeError::Misuse(format!(
            "{} is in use by a running node; stop it first",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(NodeError::Misuse(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// The term and index of the last entry in the log of the stopped node at
/// `dir`. Reads only. Compare the answers of every node (term first, then
/// index) to find the most up-to-date one.
///
/// ```no_run
/// let info = dqlite_node::read_last_entry_info(std::path::Path::new("/var/lib/n1"))?;
/// println!("term {} index {}", info.term, info.index);
/// # Ok::<(), dqlite_node::NodeError>(())
/// ```
pub fn read_last_entry_info(dir: &Path) -> Result<LastEntryInfo, NodeError> {
    require_node(dir)?;
    let _lock = lock(dir)?;
    Ok(offline::read_last_entry_info(Arc::new(RealDisk), dir)?)
}

/// Forces the membership of the stopped node at `dir` to exactly `nodes`
/// (roles kept), for a cluster that lost its quorum: run it once on the
/// node with the most recent last entry, copy that directory to the other
/// surviving members, then restart them. The node at `dir` must be a voter
/// in `nodes`. Returns the position of the entry written.
///
/// ```no_run
/// use dqlite_node::{NodeInfo, Role};
/// let nodes = [NodeInfo::new(1, "127.0.0.1:9001", Role::Voter)];
/// dqlite_node::reconfigure_membership_ext(std::path::Path::new("/var/lib/n1"), &nodes)?;
/// # Ok::<(), dqlite_node::NodeError>(())
/// ```
pub fn reconfigure_membership_ext(
    dir: &Path,
    nodes: &[NodeInfo],
) -> Result<LastEntryInfo, NodeError> {
    if nodes.is_empty() {
        return Err(NodeError::Misuse(
            "the new membership needs at least one node".into(),
        ));
    }
    require_node(dir)?;
    let _lock = lock(dir)?;
    let nodes = nodes.to_vec();
    Ok(offline::reconfigure_membership(
        Arc::new(RealDisk),
        dir,
        nodes,
    )?)
}

/// Makes a copy of another member's data directory the stopped node
/// `id`'s own, after [`reconfigure_membership_ext`] on the most recent
/// node: its raft id and its `node.json` (id and `address`) become this
/// node's; the data stays as copied.
///
/// ```no_run
/// dqlite_node::adopt_copied_directory(std::path::Path::new("/var/lib/n2"), 2, "10.0.0.2:9001")?;
/// # Ok::<(), dqlite_node::NodeError>(())
/// ```
pub fn adopt_copied_directory(dir: &Path, id: u64, address: &str) -> Result<(), NodeError> {
    require_node(dir)?;
    let data = dqlite_server::dir::DataDir::open(dir)?;
    offline::adopt_copy(Arc::new(RealDisk), dir, id)?;
    data.write_node(&dqlite_server::dir::NodeRecord {
        id,
        address: address.to_string(),
    })?;
    Ok(())
}
