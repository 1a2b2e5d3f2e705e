//! Loading a node's raft directory at start: newest valid snapshot, hard
//! state, and the log after the snapshot (torn tail truncated, corruption
//! reported or set aside).

use std::path::Path;
use std::sync::Arc;

use raft::eraftpb::HardState;

use crate::core::Boot;
use crate::membership::{ClusterMeta, NodeInfo, Role};
use crate::storage::log::LoadReport;
use crate::storage::mem::DEFAULT_LOG_CACHE_BYTES;
use crate::storage::snapshot::{ConfStateCopy, SnapshotHeader};
use crate::storage::{Disk, Log, LogOptions, MetaFile, MetaState, SnapshotStore, StorageError};
use crate::State;

/// Everything opened at start.
pub struct Opened {
    /// The hard-state file.
    pub meta: MetaFile,
    /// The on-disk log.
    pub log: Log,
    /// What the core starts from.
    pub boot: Boot,
    /// The snapshot store.
    pub snapshots: SnapshotStore,
    /// What loading found (torn tail, files set aside).
    pub report: LoadReport,
}

/// Opens (creating if needed) the raft directory, keeping at most about
/// [`DEFAULT_LOG_CACHE_BYTES`] of log entries in memory.
pub fn open(
    disk: Arc<dyn Disk>,
    raft_dir: &Path,
    options: LogOptions,
) -> Result<Opened, StorageError> {
    open_bounded(disk, raft_dir, options, DEFAULT_LOG_CACHE_BYTES, 0)
}

/// Like [`open`], keeping about `log_budget` bytes of entries in memory:
/// every entry's index and term is kept, but payloads of committed entries
/// leave memory from the front while more than the budget is held; they are
/// read back from the segment files when raft needs them (to apply them, or
/// for a lagging follower). Committed means at or below the durable commit
/// index of the meta file or `applied`, the State's applied index (a State
/// only ever applies committed entries; pass 0 if unknown). Entries after
/// both always stay in memory: a new leader may still replace them.
pub fn open_bounded(
    disk: Arc<dyn Disk>,
    raft_dir: &Path,
    options: LogOptions,
    log_budget: u64,
    applied: u64,
) -> Result<Opened, StorageError> {
    disk.create_dir_all(raft_dir)
        .map_err(|e| StorageError::io(raft_dir, e))?;
    let snapshots = SnapshotStore::new(disk.clone(), raft_dir)?;
    snapshots.remove_temps()?;
    let snapshot = snapshots.latest(options.auto_recovery)?;
    let meta = MetaFile::open(disk.as_ref(), raft_dir)?;
    let after = snapshot.as_ref().map_or(0, |s| s.header.index);
    let st = meta.state();
    // Only a bounded tail of payloads stays in memory; committed entries
    // before it are read back from the segment files when needed.
    let (log, mut report) = Log::open_bounded(
        disk,
        raft_dir,
        options,
        after,
        log_budget,
        st.commit.max(applied),
    )?;
    let hard_state = HardState {
        term: st.term,
        vote: st.vote,
        commit: st.commit,
        ..Default::default()
    };
    let entries = std::mem::take(&mut report.entries);
    let dropped_terms = std::mem::take(&mut report.dropped_terms);
    Ok(Opened {
        meta,
        log,
        boot: Boot {
            hard_state,
            snapshot: snapshot.map(|s| s.header),
            dropped_terms,
            entries,
        },
        snapshots,
        report,
    })
}

/// Writes the first state of a brand-new one-node cluster: a snapshot at
/// index 1, term 1 whose configuration is this node alone, and the hard
/// state naming this node. Joiners then always start from a snapshot.
pub fn bootstrap<S: State>(
    disk: Arc<dyn Disk>,
    raft_dir: &Path,
    id: u64,
    address: &str,
    state: &S,
) -> Result<(), StorageError> {
    let me = NodeInfo {
        id,
        address: address.to_string(),
        role: Role::Voter,
        ..Default::default()
    };
    bootstrap_cluster(disk, raft_dir, id, &[me], state)
}

/// Like [`bootstrap`] for a whole initial membership at once: run it with
/// the same `nodes` in every member's directory (tests and the simulator
/// start multi-node clusters this way).
pub fn bootstrap_cluster<S: State>(
    disk: Arc<dyn Disk>,
    raft_dir: &Path,
    id: u64,
    nodes: &[NodeInfo],
    state: &S,
) -> Result<(), StorageError> {
    disk.create_dir_all(raft_dir)
        .map_err(|e| StorageError::io(raft_dir, e))?;
    let snapshots = SnapshotStore::new(disk.clone(), raft_dir)?;
    let mut cluster = ClusterMeta::default();
    for n in nodes {
        cluster.apply_change(&crate::membership::MemberChange::Set(n.clone()));
    }
    let of = |role: Role| {
        nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.id)
            .collect()
    };
    let header = SnapshotHeader {
        index: 1,
        term: 1,
        conf_state: ConfStateCopy {
            voters: of(Role::Voter),
            learners: of(Role::StandBy),
            ..Default::default()
        },
        cluster,
    };
    snapshots.write(&header, &mut |w| state.freeze()?.write_to(w))?;
    write_identity(disk.as_ref(), raft_dir, id, 1)
}

/// Records this node's id (and a starting term) in the meta file.
pub fn write_identity(
    disk: &dyn Disk,
    raft_dir: &Path,
    id: u64,
    term: u64,
) -> Result<(), StorageError> {
    disk.create_dir_all(raft_dir)
        .map_err(|e| StorageError::io(raft_dir, e))?;
    let mut meta = MetaFile::open(disk, raft_dir)?;
    let st = meta.state();
    let path = raft_dir.join("meta");
    let io = |e| StorageError::io(&path, e);
    meta.write(MetaState {
        id,
        term: st.term.max(term),
        vote: st.vote,
        commit: st.commit.max(if term > 0 { 1 } else { 0 }),
    })
    .map_err(io)?;
    meta.sync().map_err(io)
}
