//! Hard state (`raft/meta`): the node id, term, vote and commit index, kept
//! in two alternating checksummed slots of one preallocated file.
//!
//! Why two slots: a write that tears can only damage the slot being written;
//! the other still holds the previous durable value, so a crash mid-write
//! never loses the vote (which would allow voting twice in one term).

use std::io;
use std::path::{Path, PathBuf};

use super::disk::{read_exact_at, Disk, DiskFile};
use super::StorageError;

const SLOT_SIZE: u64 = 64;
const MAGIC: u32 = 0x4451_4d54; // "DQMT"
const BODY: usize = 4 + 8 * 5;

/// What the meta file stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaState {
    /// This node's raft id (0: not yet part of a cluster).
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Who this node voted for in `term` (0: nobody).
    pub vote: u64,
    /// Last known commit index (a hint; never needed for safety).
    pub commit: u64,
}

/// The open meta file.
pub struct MetaFile {
    file: Box<dyn DiskFile>,
    seq: u64,
    state: MetaState,
}

fn encode(seq: u64, s: &MetaState) -> [u8; SLOT_SIZE as usize] {
    let mut buf = [0u8; SLOT_SIZE as usize];
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    for (i, v) in [seq, s.id, s.term, s.vote, s.commit].iter().enumerate() {
        buf[4 + i * 8..12 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    let crc = crc32c::crc32c(&buf[..BODY]);
    buf[BODY..BODY + 4].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn decode(buf: &[u8]) -> Option<(u64, MetaState)> {
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[4 + i * 8..12 + i * 8]);
        u64::from_le_bytes(b)
    };
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&buf[0..4]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&buf[BODY..BODY + 4]);
    if u32::from_le_bytes(magic) != MAGIC || u32::from_le_bytes(crc) != crc32c::crc32c(&buf[..BODY])
    {
        return None;
    }
    let state = MetaState {
        id: word(1),
        term: word(2),
        vote: word(3),
        commit: word(4),
    };
    Some((word(0), state))
}

/// Path of the meta file inside a raft directory.
pub fn meta_path(raft_dir: &Path) -> PathBuf {
    raft_dir.join("meta")
}

/// Reads the meta file without modifying anything. `Ok(None)` when absent.
pub fn read_meta(disk: &dyn Disk, raft_dir: &Path) -> Result<Option<MetaState>, StorageError> {
    let path = meta_path(raft_dir);
    if !disk.exists(&path) {
        return Ok(None);
    }
    let file = disk.open(&path).map_err(|e| StorageError::io(&path, e))?;
    Ok(read_slots(file.as_ref(), &path)?.map(|(_, s)| s))
}

fn read_slots(file: &dyn DiskFile, path: &Path) -> Result<Option<(u64, MetaState)>, StorageError> {
    let mut best: Option<(u64, MetaState)> = None;
    let mut any_bytes = false;
    for slot in 0..2u64 {
        let mut buf = [0u8; SLOT_SIZE as usize];
        match read_exact_at(file, &mut buf, slot * SLOT_SIZE) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(StorageError::io(path, e)),
        }
        any_bytes |= buf.iter().any(|b| *b != 0);
        if let Some((seq, st)) = decode(&buf) {
            if best.map_or(true, |(s, _)| seq > s) {
                best = Some((seq, st));
            }
        }
    }
    match best {
        None if any_bytes => Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: "both hard-state slots fail their checksum".into(),
        }),
        other => Ok(other),
    }
}

impl MetaFile {
    /// Opens (creating and preallocating if needed) the meta file.
    pub fn open(disk: &dyn Disk, raft_dir: &Path) -> Result<Self, StorageError> {
        let path = meta_path(raft_dir);
        if disk.exists(&path) {
            let file = disk.open(&path).map_err(|e| StorageError::io(&path, e))?;
            let (seq, state) = read_slots(file.as_ref(), &path)?.unwrap_or_default();
            return Ok(MetaFile { file, seq, state });
        }
        let tmp = path.with_extension("tmp");
        let io = |e| StorageError::io(&path, e);
        let mut file = disk.create(&tmp).map_err(io)?;
        file.write_all_at(&[0u8; 2 * SLOT_SIZE as usize], 0)
            .map_err(io)?;
        file.sync_data().map_err(io)?;
        disk.rename(&tmp, &path).map_err(io)?;
        disk.sync_dir(raft_dir).map_err(io)?;
        Ok(MetaFile {
            file,
            seq: 0,
            state: MetaState::default(),
        })
    }

    /// Like [`MetaFile::open`]; with `auto_recovery`, a file whose two slots
    /// both fail their checksum is renamed aside (`meta.corrupt`) and a
    /// fresh one is created: the term and vote are lost, so the caller must
    /// rebuild the term and fence the node (see [`super::fence`]). Returns
    /// the set-aside path when that happened.
    pub fn open_recovering(
        disk: &dyn Disk,
        raft_dir: &Path,
        auto_recovery: bool,
    ) -> Result<(Self, Option<PathBuf>), StorageError> {
        match Self::open(disk, raft_dir) {
            Err(StorageError::Corrupt { path, detail }) if auto_recovery => {
                let aside = path.with_extension("corrupt");
                tracing::warn!(file = %path.display(), aside = %aside.display(), detail, "auto-recovery set the damaged hard-state file aside");
                let io = |e| StorageError::io(&path, e);
                disk.rename(&path, &aside).map_err(io)?;
                disk.sync_dir(raft_dir).map_err(io)?;
                Ok((Self::open(disk, raft_dir)?, Some(aside)))
            }
            other => other.map(|m| (m, None)),
        }
    }

    /// The last state written (or loaded).
    pub fn state(&self) -> MetaState {
        self.state
    }

    /// Writes `state` into the slot not holding the current value, without
    /// syncing. Call [`MetaFile::sync`] before relying on it.
    pub fn write(&mut self, state: MetaState) -> io::Result<()> {
        let seq = self.seq + 1;
        let slot = seq % 2;
        self.file
            .write_all_at(&encode(seq, &state), slot * SLOT_SIZE)?;
        self.seq = seq;
        self.state = state;
        Ok(())
    }

    /// Makes the last write durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::RealDisk;

    #[test]
    fn hard_state_alternates_slots_and_survives_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let disk = RealDisk;
        let mut meta = MetaFile::open(&disk, dir.path()).unwrap();
        let a = MetaState {
            id: 7,
            term: 3,
            vote: 7,
            commit: 10,
        };
        let b = MetaState { term: 4, ..a };
        meta.write(a).unwrap();
        meta.sync().unwrap();
        meta.write(b).unwrap();
        meta.sync().unwrap();
        drop(meta);
        // Both slots hold a valid copy: seq 1 in slot 1, seq 2 in slot 0.
        let raw = std::fs::read(meta_path(dir.path())).unwrap();
        assert_eq!(decode(&raw[64..128]).unwrap(), (1, a));
        assert_eq!(decode(&raw[0..64]).unwrap(), (2, b));
        assert_eq!(read_meta(&disk, dir.path()).unwrap(), Some(b));

        // Tear the newest slot: the previous value comes back.
        let mut torn = raw.clone();
        torn[20] ^= 0xff;
        std::fs::write(meta_path(dir.path()), &torn).unwrap();
        assert_eq!(read_meta(&disk, dir.path()).unwrap(), Some(a));

        // Both torn: a clear error, never a silent reset to term 0.
        torn[64 + 20] ^= 0xff;
        std::fs::write(meta_path(dir.path()), &torn).unwrap();
        assert!(matches!(
            read_meta(&disk, dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
