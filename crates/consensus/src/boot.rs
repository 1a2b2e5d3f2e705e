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
use crate::storage::{
    Disk, Fence, Log, LogOptions, MetaFile, MetaState, SnapshotStore, StorageError,
};
use crate::State;
use tracing::warn;

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
    open_inner(disk, raft_dir, options, log_budget, applied, false)
}

/// Like [`open_bounded`], where `applied` is the State's own applied index
/// (not a lower bound): a snapshot that holds only metadata
/// ([`SnapshotHeader::files`]) but is newer than what the State's files
/// hold has lost its data (the files were set aside as damaged). Then,
/// with auto-recovery, the snapshots and the log are set aside and a
/// fence keeps the node from voting until it has caught up from its
/// peers; without, it is an error naming the snapshot.
pub fn open_for_state(
    disk: Arc<dyn Disk>,
    raft_dir: &Path,
    options: LogOptions,
    log_budget: u64,
    applied: u64,
) -> Result<Opened, StorageError> {
    open_inner(disk, raft_dir, options, log_budget, applied, true)
}

fn open_inner(
    disk: Arc<dyn Disk>,
    raft_dir: &Path,
    options: LogOptions,
    log_budget: u64,
    applied: u64,
    applied_is_exact: bool,
) -> Result<Opened, StorageError> {
    disk.create_dir_all(raft_dir)
        .map_err(|e| StorageError::io(raft_dir, e))?;
    let mut snapshots = SnapshotStore::new(disk.clone(), raft_dir)?;
    snapshots.remove_temps()?;
    let auto = options.auto_recovery;
    let (mut snapshot, snapshots_aside) = snapshots.latest_recovering(auto)?;
    let fence = Fence::read(disk.clone(), raft_dir)?;
    let (mut meta, meta_aside) = MetaFile::open_recovering(disk.as_ref(), raft_dir, auto)?;
    let mut orphaned = Vec::new();
    let mut orphan_lost = None;
    if let Some(s) = snapshot
        .as_ref()
        .filter(|s| applied_is_exact && s.header.files && applied < s.header.index)
    {
        let detail = format!(
            "snapshot {} holds no data: its data is the disk-mode database files, \
             which hold only index {applied}",
            s.header.index
        );
        if !auto {
            return Err(StorageError::Corrupt {
                path: s.path.clone(),
                detail,
            });
        }
        // Everything this node may have acknowledged is at most the end of
        // its log; the log is useless without the snapshot's data.
        let (log, _) = Log::open(disk.clone(), raft_dir, options, s.header.index)?;
        let upto = log.last_index().max(meta.state().commit);
        drop(log);
        for dir in [
            raft_dir.join("snap"),
            crate::storage::log::log_dir(raft_dir),
        ] {
            let aside = free_name(disk.as_ref(), &dir);
            disk.rename(&dir, &aside)
                .map_err(|e| StorageError::io(&dir, e))?;
            warn!(
                file = %s.path.display(),
                aside = %aside.display(),
                "auto-recovery set the raft snapshots and log aside: {detail}; the node catches up from its peers"
            );
            orphaned.push(aside);
        }
        disk.sync_dir(raft_dir)
            .map_err(|e| StorageError::io(raft_dir, e))?;
        snapshots = SnapshotStore::new(disk.clone(), raft_dir)?;
        snapshot = None;
        orphan_lost = Some(upto);
    }
    let after = snapshot.as_ref().map_or(0, |s| s.header.index);
    let st = meta.state();
    // Only a bounded tail of payloads stays in memory; committed entries
    // before it are read back from the segment files when needed.
    let (log, mut report) = Log::open_bounded(
        disk.clone(),
        raft_dir,
        options,
        after,
        log_budget,
        st.commit.max(applied),
    )?;
    let mut lost = report.lost_upto.max(orphan_lost);
    report.set_aside.extend(orphaned);
    for (path, index) in snapshots_aside {
        report.set_aside.push(path);
        lost = Some(lost.unwrap_or(0).max(index));
    }
    let mut st = st;
    if let Some(aside) = meta_aside {
        // The vote is gone: the term restarts from the newest one the log
        // and snapshot show, and the fence keeps the node from voting until
        // it has caught up past everything it holds.
        let last_term = report
            .entries
            .last()
            .map(|e| e.term)
            .or_else(|| report.dropped_terms.last().copied())
            .unwrap_or(0);
        let snap_term = snapshot.as_ref().map_or(0, |s| s.header.term);
        st = MetaState {
            id: 0,
            term: last_term.max(snap_term),
            vote: 0,
            commit: 0,
        };
        let path = raft_dir.join("meta");
        meta.write(st).map_err(|e| StorageError::io(&path, e))?;
        meta.sync().map_err(|e| StorageError::io(&path, e))?;
        report.set_aside.push(aside);
        lost = Some(lost.unwrap_or(0).max(log.last_index()).max(after));
    }
    let fence = match lost {
        Some(upto) => {
            let fence = Fence::raise(disk, raft_dir, fence, upto)?;
            warn!(
                upto = fence.upto(),
                file = %fence.path().display(),
                "auto-recovery discarded data this node may have acknowledged: it will not vote until it has caught up to the fence"
            );
            Some(fence)
        }
        None => fence,
    };
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
            fence,
        },
        snapshots,
        report,
    })
}

/// `<path>.corrupt`, or `<path>.corrupt.N` if taken.
fn free_name(disk: &dyn Disk, path: &Path) -> std::path::PathBuf {
    let base = format!("{}.corrupt", path.display());
    let mut aside = std::path::PathBuf::from(&base);
    let mut n = 0;
    while disk.exists(&aside) {
        n += 1;
        aside = std::path::PathBuf::from(format!("{base}.{n}"));
    }
    aside
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
        files: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvState;
    use crate::storage::fence::fence_path;
    use crate::storage::snapshot::snapshot_name;
    use crate::storage::RealDisk;
    use raft::eraftpb::Entry;

    fn recover(on: bool) -> LogOptions {
        LogOptions {
            auto_recovery: on,
            ..LogOptions::default()
        }
    }

    /// A node directory with the bootstrap snapshot at 1 and entries
    /// 2..=`last` in term 2; returns its raft directory.
    fn node_dir(root: &Path, last: u64) -> std::path::PathBuf {
        let raft_dir = root.join("raft");
        let disk: Arc<dyn Disk> = Arc::new(RealDisk);
        let me = NodeInfo {
            id: 1,
            address: "n1".into(),
            role: Role::Voter,
            ..Default::default()
        };
        let other = NodeInfo {
            id: 2,
            address: "n2".into(),
            ..me.clone()
        };
        bootstrap_cluster(disk.clone(), &raft_dir, 1, &[me, other], &KvState::new()).unwrap();
        let mut opened = open(disk, &raft_dir, recover(false)).unwrap();
        let entries: Vec<Entry> = (2..=last)
            .map(|index| Entry {
                index,
                term: 2,
                ..Default::default()
            })
            .collect();
        opened.log.append(&entries).unwrap();
        opened.log.sync().unwrap();
        opened
            .meta
            .write(MetaState {
                id: 1,
                term: 3,
                vote: 2,
                commit: last,
            })
            .unwrap();
        opened.meta.sync().unwrap();
        raft_dir
    }

    fn flip(path: &Path, at: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0x20;
        std::fs::write(path, &bytes).unwrap();
    }

    fn must_refuse(raft_dir: &Path, file: &Path) {
        match open(Arc::new(RealDisk), raft_dir, recover(false)) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, file),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("damage to {} went unnoticed", file.display()),
        }
    }

    #[test]
    fn a_damaged_hard_state_is_refused_or_rebuilt_behind_a_fence() {
        let root = tempfile::tempdir().unwrap();
        let raft_dir = node_dir(root.path(), 9);
        let meta = raft_dir.join("meta");
        // Both slots: one copy alone is survived silently (see meta.rs).
        flip(&meta, 20);
        flip(&meta, 64 + 20);
        must_refuse(&raft_dir, &meta);
        let opened = open(Arc::new(RealDisk), &raft_dir, recover(true)).unwrap();
        assert!(opened
            .report
            .set_aside
            .contains(&raft_dir.join("meta.corrupt")));
        // The vote is gone; the term is the newest one the log shows, and
        // the node may not vote before it caught up with all it held.
        let st = opened.meta.state();
        assert_eq!((st.term, st.vote), (2, 0));
        assert_eq!(opened.boot.fence.as_ref().map(Fence::upto), Some(9));
        assert_eq!(opened.boot.entries.len(), 8);
        drop(opened);
        // The fence outlives a restart, though nothing is damaged now.
        let again = open(Arc::new(RealDisk), &raft_dir, recover(true)).unwrap();
        assert_eq!(again.boot.fence.as_ref().map(Fence::upto), Some(9));
        assert!(fence_path(&raft_dir).exists());
    }

    #[test]
    fn a_damaged_snapshot_is_refused_or_set_aside_behind_a_fence() {
        // Damage in the state bytes, then in the header (the metadata).
        for at_header in [false, true] {
            let root = tempfile::tempdir().unwrap();
            let raft_dir = node_dir(root.path(), 5);
            let snap = raft_dir.join("snap").join(snapshot_name(1, 1));
            let len = std::fs::metadata(&snap).unwrap().len() as usize;
            flip(&snap, if at_header { 14 } else { len - 13 });
            must_refuse(&raft_dir, &snap);
            let opened = open(Arc::new(RealDisk), &raft_dir, recover(true)).unwrap();
            assert!(opened.boot.snapshot.is_none());
            assert!(opened
                .report
                .set_aside
                .iter()
                .any(|p| p.ends_with(format!("{}.corrupt", snapshot_name(1, 1)))));
            // The log after it is still there, but the state it builds on
            // is gone: the node must be sent a snapshot and stay fenced.
            assert!(opened.boot.fence.as_ref().is_some_and(|f| f.upto() >= 5));
        }
    }
}
