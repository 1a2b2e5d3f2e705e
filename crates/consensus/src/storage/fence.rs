//! The recovery fence (`raft/fence`): written when auto-recovery discarded
//! log entries, a snapshot or the hard state that this node may already
//! have acknowledged (or voted with).
//!
//! Why: raft's safety rests on every voter keeping what it acknowledged and
//! the vote it cast. A node that lost acknowledged entries and then voted
//! for a candidate lacking them could help elect a leader without a
//! committed entry. So while the fence stands the node casts no vote (nor
//! pre-vote), never campaigns and ignores leadership transfers; it lifts the
//! fence once a leader's commit index, learned by replication, reaches
//! `upto`: an upper bound on the last index it could have acknowledged
//! before the damage. Every entry it could have helped commit is then back
//! in its log. The file keeps the rule across restarts: the damaged files
//! are already set aside, so a second start would not see the damage.
//!
//! ```text
//! magic "DQFN" | upto u64 | crc32c u32   (16 bytes)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk::{read_exact_at, write_file_atomic, Disk};
use super::StorageError;

const MAGIC: &[u8; 4] = b"DQFN";
const SIZE: usize = 16;

/// Path of the fence file inside a raft directory.
pub fn fence_path(raft_dir: &Path) -> PathBuf {
    raft_dir.join("fence")
}

/// A standing recovery fence and the file that records it.
pub struct Fence {
    disk: Arc<dyn Disk>,
    path: PathBuf,
    upto: u64,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("path", &self.path)
            .field("upto", &self.upto)
            .finish()
    }
}

fn encode(upto: u64) -> [u8; SIZE] {
    let mut buf = [0u8; SIZE];
    buf[0..4].copy_from_slice(MAGIC);
    buf[4..12].copy_from_slice(&upto.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..12]);
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
    buf
}

impl Fence {
    /// Reads the fence of a raft directory, if one stands. A damaged fence
    /// file is an error even with auto-recovery: without it the node cannot
    /// know how far it must catch up before voting safely.
    pub fn read(disk: Arc<dyn Disk>, raft_dir: &Path) -> Result<Option<Fence>, StorageError> {
        let path = fence_path(raft_dir);
        if !disk.exists(&path) {
            return Ok(None);
        }
        let io = |e| StorageError::io(&path, e);
        let file = disk.open(&path).map_err(io)?;
        let mut buf = [0u8; SIZE];
        let intact = read_exact_at(file.as_ref(), &mut buf, 0).is_ok()
            && &buf[0..4] == MAGIC
            && u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]])
                == crc32c::crc32c(&buf[..12]);
        if !intact {
            return Err(StorageError::Corrupt {
                path,
                detail: "the recovery fence fails its checksum".into(),
            });
        }
        let mut upto = [0u8; 8];
        upto.copy_from_slice(&buf[4..12]);
        Ok(Some(Fence {
            disk,
            path,
            upto: u64::from_le_bytes(upto),
        }))
    }

    /// Raises (or sets) the fence of a raft directory to at least `upto`,
    /// durably, and returns it.
    pub fn raise(
        disk: Arc<dyn Disk>,
        raft_dir: &Path,
        existing: Option<Fence>,
        upto: u64,
    ) -> Result<Fence, StorageError> {
        let upto = existing.map_or(upto, |f| f.upto.max(upto));
        let path = fence_path(raft_dir);
        write_file_atomic(disk.as_ref(), &path, &encode(upto))
            .map_err(|e| StorageError::io(&path, e))?;
        Ok(Fence { disk, path, upto })
    }

    /// The commit index this node must reach before it votes again.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// The file recording the fence.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lifts the fence: removes the file, durably.
    pub fn lift(&self) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&self.path, e);
        self.disk.remove(&self.path).map_err(io)?;
        let dir = super::disk::parent(&self.path).map_err(io)?;
        self.disk.sync_dir(&dir).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::RealDisk;

    #[test]
    fn fence_is_raised_kept_across_reads_and_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Arc<dyn Disk> = Arc::new(RealDisk);
        assert!(Fence::read(disk.clone(), dir.path()).unwrap().is_none());
        let f = Fence::raise(disk.clone(), dir.path(), None, 40).unwrap();
        assert_eq!(f.upto(), 40);
        // Raising never lowers it.
        let f = Fence::raise(disk.clone(), dir.path(), Some(f), 10).unwrap();
        assert_eq!(f.upto(), 40);
        let back = Fence::read(disk.clone(), dir.path()).unwrap().unwrap();
        assert_eq!(back.upto(), 40);
        back.lift().unwrap();
        assert!(Fence::read(disk.clone(), dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_damaged_fence_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Arc<dyn Disk> = Arc::new(RealDisk);
        Fence::raise(disk.clone(), dir.path(), None, 7).unwrap();
        let path = fence_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        match Fence::read(disk, dir.path()) {
            Err(StorageError::Corrupt { path: p, .. }) => assert_eq!(p, path),
            other => panic!("damage went unnoticed: {other:?}"),
        }
    }
}
