//! Durable storage under `<data dir>/raft/`: the segmented log (`log/`), the
//! hard state (`meta`), snapshots (`snap/`), all through the [`Disk`] seam,
//! plus the in-memory view raft-rs reads ([`RaftLogView`]).

pub mod disk;
pub mod fence;
pub mod log;
pub mod mem;
pub mod meta;
pub mod segment;
pub mod snapshot;

use std::path::{Path, PathBuf};

pub use disk::{AlignedBuf, Disk, DiskFile, RealDisk, DIRECT_ALIGN};
pub use fence::Fence;
pub use log::{Log, LogOptions, LogReader};
pub use mem::RaftLogView;
pub use meta::{MetaFile, MetaState};
pub use snapshot::{SnapshotInfo, SnapshotStore};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error on a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checksum, format or sequence check failed.
    #[error("corrupt data in {path}: {detail}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Entries were appended after a hole.
    #[error("log gap: last index {last}, next entry {next}")]
    Gap {
        /// Last index in the log.
        last: u64,
        /// Index of the entry that did not follow it.
        next: u64,
    },
    /// A snapshot that should exist does not.
    #[error("snapshot {index} (term {term}) not found")]
    SnapshotMissing {
        /// Its index.
        index: u64,
        /// Its term.
        term: u64,
    },
}

impl StorageError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the disk is full (`ENOSPC`, or a quota exceeded): the
    /// cure is freeing space, not repairing anything, so callers report it
    /// apart from other I/O errors.
    pub fn is_disk_full(&self) -> bool {
        match self {
            // By errno: the matching `ErrorKind`s are newer than our MSRV.
            StorageError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
            }
            _ => false,
        }
    }
}

/// `ENOSPC` on Linux; the simulator's disks answer it too.
const ENOSPC: i32 = 28;
/// `EDQUOT` on Linux: a quota is exhausted, which is a full disk too.
const EDQUOT: i32 = 122;

/// The raft directory inside a node's data directory.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_disk_is_reported_as_full() {
        let io = |errno| {
            StorageError::io(
                Path::new("raft/log"),
                std::io::Error::from_raw_os_error(errno),
            )
        };
        assert!(io(ENOSPC).is_disk_full());
        assert!(io(EDQUOT).is_disk_full());
        assert!(!io(5).is_disk_full(), "EIO is another failure");
        assert!(!StorageError::Gap { last: 1, next: 3 }.is_disk_full());
    }
}
