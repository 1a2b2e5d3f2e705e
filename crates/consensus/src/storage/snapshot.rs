//! Snapshot files (`raft/snap/snapshot-<term>-<index>`), written atomically
//! (temp file, fsync, rename, fsync directory) and streamed both ways: the
//! [`crate::State`] writes into an `io::Write` and restores from an
//! `io::Read`, so no snapshot is ever held in memory whole.
//!
//! ```text
//! "DQRSSNP1" | header length u32 | header (JSON) | state bytes | crc32c u32 | "DQRSEND1"
//! ```
//! The checksum covers everything before it. A file is only ever read after
//! the whole of it has been verified.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{ConfState, SnapshotMetadata};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::disk::{read_exact_at, Disk, DiskFile};
use super::StorageError;
use crate::membership::ClusterMeta;

const MAGIC: &[u8; 8] = b"DQRSSNP1";
const END: &[u8; 8] = b"DQRSEND1";
const TRAILER: u64 = 12;
const MAX_HEADER: u64 = 64 << 20;
const BUF: usize = 256 << 10;

/// Serializable copy of raft's `ConfState`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfStateCopy {
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Outgoing voters of a joint configuration.
    pub voters_outgoing: Vec<u64>,
    /// Learners waiting for the joint configuration to end.
    pub learners_next: Vec<u64>,
    /// Whether the joint configuration is left automatically.
    pub auto_leave: bool,
}

impl From<&ConfState> for ConfStateCopy {
    fn from(c: &ConfState) -> Self {
        ConfStateCopy {
            voters: c.voters.clone(),
            learners: c.learners.clone(),
            voters_outgoing: c.voters_outgoing.clone(),
            learners_next: c.learners_next.clone(),
            auto_leave: c.auto_leave,
        }
    }
}

impl From<&ConfStateCopy> for ConfState {
    fn from(c: &ConfStateCopy) -> Self {
        ConfState {
            voters: c.voters.clone(),
            learners: c.learners.clone(),
            voters_outgoing: c.voters_outgoing.clone(),
            learners_next: c.learners_next.clone(),
            auto_leave: c.auto_leave,
            ..Default::default()
        }
    }
}

/// The header at the front of every snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Index of the last entry the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Raft configuration at `index`.
    pub conf_state: ConfStateCopy,
    /// Service registry at `index`.
    pub cluster: ClusterMeta,
    /// The file holds no state bytes: the state's own durable files (a
    /// disk-mode store's checkpointed databases) hold it, at `index` or
    /// later. Peers are sent a fresh image of the state instead of this
    /// file ([`crate::State::checkpoint`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files: bool,
}

impl SnapshotHeader {
    /// The raft metadata of this snapshot.
    pub fn metadata(&self) -> SnapshotMetadata {
        let mut m = SnapshotMetadata {
            index: self.index,
            term: self.term,
            ..Default::default()
        };
        m.set_conf_state(ConfState::from(&self.conf_state));
        m
    }
}

/// A verified snapshot file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its header.
    pub header: SnapshotHeader,
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// A snapshot auto-recovery renamed aside: its new path and the index its
/// name carried.
pub type SetAside = (PathBuf, u64);

/// Snapshot files in `raft/snap/`.
#[derive(Clone)]
pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

/// File name of a snapshot.
pub fn snapshot_name(term: u64, index: u64) -> String {
    format!("snapshot-{term:020}-{index:020}")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snapshot-")?;
    let (t, i) = rest.split_once('-')?;
    if t.len() != 20 || i.len() != 20 {
        return None;
    }
    Some((t.parse().ok()?, i.parse().ok()?))
}

/// Streams bytes into a file at increasing offsets.
struct FileWriter<'a> {
    file: &'a mut dyn DiskFile,
    offset: u64,
    buf: Vec<u8>,
    /// Where the data was last synced.
    synced: u64,
}

/// A large snapshot is synced as it is written, every this many bytes:
/// one fsync of hundreds of MiB at the end would hold the disk, and the
/// log's own fsyncs behind it, for seconds.
const SYNC_EVERY: u64 = 4 << 20;

impl FileWriter<'_> {
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.offset)?;
            self.offset += self.buf.len() as u64;
            self.buf.clear();
        }
        if self.offset - self.synced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.synced = self.offset;
        }
        Ok(())
    }
}

impl Write for FileWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BUF {
            self.flush_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

/// Checksums everything written through it.
struct CrcWriter<'a> {
    out: &'a mut dyn Write,
    crc: u32,
    written: u64,
}

impl Write for CrcWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.out.write(data)?;
        self.crc = crc32c::crc32c_append(self.crc, &data[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes a whole snapshot file's bytes into `out`: `header`, whatever
/// `body` writes, and the checksum trailer. Returns the size. The same
/// bytes go into a local file or, streamed, to a peer.
pub fn write_framed(
    header: &SnapshotHeader,
    body: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let hbytes = serde_json::to_vec(header).map_err(io::Error::other)?;
    let hlen = u32::try_from(hbytes.len()).map_err(io::Error::other)?;
    let mut w = CrcWriter {
        out,
        crc: 0,
        written: 0,
    };
    w.write_all(MAGIC)?;
    w.write_all(&hlen.to_le_bytes())?;
    w.write_all(&hbytes)?;
    body(&mut w)?;
    let (crc, written) = (w.crc, w.written);
    out.write_all(&crc.to_le_bytes())?;
    out.write_all(END)?;
    out.flush()?;
    Ok(written + TRAILER)
}

/// Reads a byte range of a file sequentially.
pub struct RangeReader {
    file: Box<dyn DiskFile>,
    offset: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.offset);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.offset)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot shorter than expected",
            ));
        }
        self.offset += got as u64;
        Ok(got)
    }
}

/// A snapshot being received from a peer, chunk by chunk. Dropped before
/// it is finished (a broken stream), its temp file is removed: a leader
/// that retries would otherwise fill the disk with partial copies.
pub struct IncomingSnapshot {
    store: SnapshotStore,
    file: Box<dyn DiskFile>,
    tmp: PathBuf,
    written: u64,
    published: bool,
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if !self.published {
            let _ = self.store.disk.remove(&self.tmp);
        }
    }
}

impl IncomingSnapshot {
    /// Appends a chunk.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all_at(chunk, self.written)
            .map_err(|e| StorageError::io(&self.tmp, e))?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Verifies, fsyncs and publishes the snapshot under its final name.
    pub fn finish(mut self) -> Result<SnapshotInfo, StorageError> {
        let io = |e| StorageError::io(&self.tmp, e);
        self.file.sync_data().map_err(io)?;
        let header = verify(self.file.as_ref(), &self.tmp)?;
        let path = self
            .store
            .dir
            .join(snapshot_name(header.term, header.index));
        self.store.disk.rename(&self.tmp, &path).map_err(io)?;
        self.published = true;
        self.store.disk.sync_dir(&self.store.dir).map_err(io)?;
        Ok(SnapshotInfo {
            header,
            path,
            size: self.written,
        })
    }
}

/// Checks the whole file and returns its header.
fn verify(file: &dyn DiskFile, path: &Path) -> Result<SnapshotHeader, StorageError> {
    let io = |e| StorageError::io(path, e);
    let corrupt = |detail: &str| StorageError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let len = file.len().map_err(io)?;
    if len < 12 + TRAILER {
        return Err(corrupt("snapshot file too short"));
    }
    let mut crc = 0u32;
    let mut offset = 0;
    let mut buf = vec![0u8; BUF];
    let body = len - TRAILER;
    while offset < body {
        let n = (body - offset).min(BUF as u64) as usize;
        read_exact_at(file, &mut buf[..n], offset).map_err(io)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        offset += n as u64;
    }
    let mut trailer = [0u8; TRAILER as usize];
    read_exact_at(file, &mut trailer, body).map_err(io)?;
    if &trailer[4..] != END
        || u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) != crc
    {
        return Err(corrupt("snapshot checksum mismatch"));
    }
    let mut head = [0u8; 12];
    read_exact_at(file, &mut head, 0).map_err(io)?;
    if &head[..8] != MAGIC {
        return Err(corrupt("bad snapshot magic"));
    }
    let hlen = u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
    if hlen > MAX_HEADER || 12 + hlen > body {
        return Err(corrupt("bad snapshot header length"));
    }
    let mut hbuf = vec![0u8; hlen as usize];
    read_exact_at(file, &mut hbuf, 12).map_err(io)?;
    serde_json::from_slice(&hbuf).map_err(|e| corrupt(&format!("bad snapshot header: {e}")))
}

impl SnapshotStore {
    /// The store for a raft directory (the `snap/` folder is created).
    pub fn new(disk: Arc<dyn Disk>, raft_dir: &Path) -> Result<Self, StorageError> {
        let dir = raft_dir.join("snap");
        disk.create_dir_all(&dir)
            .map_err(|e| StorageError::io(&dir, e))?;
        Ok(SnapshotStore { disk, dir })
    }

    /// A reader of the log next to this store's directory (`raft/log`).
    pub fn log_reader(&self) -> super::LogReader {
        let raft_dir = self.dir.parent().unwrap_or(&self.dir);
        super::LogReader::new(self.disk.clone(), raft_dir)
    }

    /// A store that must not modify the directory (offline reading).
    pub fn read_only(disk: Arc<dyn Disk>, raft_dir: &Path) -> Self {
        SnapshotStore {
            disk,
            dir: raft_dir.join("snap"),
        }
    }

    /// The directory holding the snapshots.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a snapshot: `header`, then whatever `body` writes. Durable and
    /// visible under its final name on return; never visible half-written.
    pub fn write(
        &self,
        header: &SnapshotHeader,
        body: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<SnapshotInfo, StorageError> {
        let name = snapshot_name(header.term, header.index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let io = |e| StorageError::io(&tmp, e);
        let mut file = self.disk.create(&tmp).map_err(io)?;
        let size = {
            let mut w = FileWriter {
                file: file.as_mut(),
                offset: 0,
                buf: Vec::with_capacity(BUF),
                synced: 0,
            };
            write_framed(header, body, &mut w).map_err(io)?
        };
        file.sync_data().map_err(io)?;
        drop(file);
        self.disk.rename(&tmp, &path).map_err(io)?;
        self.disk.sync_dir(&self.dir).map_err(io)?;
        Ok(SnapshotInfo {
            header: header.clone(),
            path,
            size,
        })
    }

    /// Starts receiving a snapshot streamed by a peer.
    pub fn incoming(&self, term: u64, index: u64) -> Result<IncomingSnapshot, StorageError> {
        // One name per stream: a leader may send the same snapshot again
        // while an earlier stream of it is still arriving.
        static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("recv-{}-{n}.tmp", snapshot_name(term, index)));
        let file = self
            .disk
            .create(&tmp)
            .map_err(|e| StorageError::io(&tmp, e))?;
        Ok(IncomingSnapshot {
            store: self.clone(),
            file,
            tmp,
            written: 0,
            published: false,
        })
    }

    /// The newest valid snapshot. A damaged newest one is an error, unless
    /// `auto_recovery` is set: then it is renamed aside (`.corrupt`) and the
    /// next older one is tried. Read-only when nothing is damaged.
    pub fn latest(&self, auto_recovery: bool) -> Result<Option<SnapshotInfo>, StorageError> {
        self.latest_recovering(auto_recovery).map(|(info, _)| info)
    }

    /// Like [`SnapshotStore::latest`], also returning the snapshots set
    /// aside on the way (their new path and the index their name carried).
    pub fn latest_recovering(
        &self,
        auto_recovery: bool,
    ) -> Result<(Option<SnapshotInfo>, Vec<SetAside>), StorageError> {
        let mut set_aside = Vec::new();
        if !self.disk.exists(&self.dir) {
            return Ok((None, set_aside));
        }
        let mut names: Vec<(u64, u64, String)> = self
            .disk
            .list(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?
            .into_iter()
            .filter_map(|n| parse_name(&n).map(|(t, i)| (i, t, n)))
            .collect();
        names.sort();
        while let Some((index, _, name)) = names.pop() {
            let path = self.dir.join(&name);
            match self.check(&path) {
                Ok(info) => return Ok((Some(info), set_aside)),
                Err(e) if auto_recovery => {
                    warn!(error = %e, file = %path.display(), "auto-recovery set a damaged snapshot aside");
                    let aside = self.dir.join(format!("{name}.corrupt"));
                    self.disk
                        .rename(&path, &aside)
                        .map_err(|e| StorageError::io(&path, e))?;
                    self.disk
                        .sync_dir(&self.dir)
                        .map_err(|e| StorageError::io(&path, e))?;
                    set_aside.push((aside, index));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((None, set_aside))
    }

    /// Verifies one snapshot file.
    pub fn check(&self, path: &Path) -> Result<SnapshotInfo, StorageError> {
        let file = self
            .disk
            .open(path)
            .map_err(|e| StorageError::io(path, e))?;
        let header = verify(file.as_ref(), path)?;
        let size = file.len().map_err(|e| StorageError::io(path, e))?;
        Ok(SnapshotInfo {
            header,
            path: path.to_path_buf(),
            size,
        })
    }

    /// The snapshot with this index and term, verified.
    pub fn find(&self, term: u64, index: u64) -> Result<SnapshotInfo, StorageError> {
        let path = self.dir.join(snapshot_name(term, index));
        if !self.disk.exists(&path) {
            return Err(StorageError::SnapshotMissing { index, term });
        }
        self.check(&path)
    }

    /// A reader over the state bytes of a verified snapshot.
    pub fn state_reader(&self, info: &SnapshotInfo) -> Result<RangeReader, StorageError> {
        let file = self
            .disk
            .open(&info.path)
            .map_err(|e| StorageError::io(&info.path, e))?;
        // The header length comes from the file, not a re-serialization.
        let mut head = [0u8; 12];
        read_exact_at(file.as_ref(), &mut head, 0).map_err(|e| StorageError::io(&info.path, e))?;
        let stored = u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
        Ok(RangeReader {
            file,
            offset: 12 + stored,
            end: info.size - TRAILER,
        })
    }

    /// A reader over the whole file (to stream it to a peer).
    pub fn raw_reader(&self, info: &SnapshotInfo) -> Result<RangeReader, StorageError> {
        let file = self
            .disk
            .open(&info.path)
            .map_err(|e| StorageError::io(&info.path, e))?;
        Ok(RangeReader {
            file,
            offset: 0,
            end: info.size,
        })
    }

    /// Removes all but the newest `keep` snapshots and stale temp files
    /// (on a real disk in the background: see [`Disk::remove_unused`]).
    pub fn prune(&self, keep: usize) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&self.dir, e);
        let names = self.disk.list(&self.dir).map_err(io)?;
        let mut snaps: Vec<(u64, String)> = names
            .iter()
            .filter_map(|n| parse_name(n).map(|(_, i)| (i, n.clone())))
            .collect();
        snaps.sort();
        let remove = snaps.len().saturating_sub(keep);
        let old = snaps
            .into_iter()
            .take(remove)
            .map(|(_, name)| self.dir.join(name))
            .collect();
        self.disk.remove_unused(&self.dir, old).map_err(io)
    }

    /// Removes temp files left by a crash mid-write (startup only).
    pub fn remove_temps(&self) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&self.dir, e);
        for name in self.disk.list(&self.dir).map_err(io)? {
            if name.ends_with(".tmp") {
                self.disk.remove(&self.dir.join(name)).map_err(io)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::RealDisk;

    fn header(index: u64) -> SnapshotHeader {
        SnapshotHeader {
            index,
            term: 2,
            conf_state: ConfStateCopy {
                voters: vec![1, 2, 3],
                ..Default::default()
            },
            cluster: ClusterMeta::default(),
            files: false,
        }
    }

    fn write(store: &SnapshotStore, index: u64, body: &[u8]) -> SnapshotInfo {
        store
            .write(&header(index), &mut |w| {
                // Streamed in small pieces, as a State would.
                for chunk in body.chunks(1000) {
                    w.write_all(chunk)?;
                }
                Ok(())
            })
            .unwrap()
    }

    #[test]
    fn snapshots_are_atomic_verified_and_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(Arc::new(RealDisk), dir.path()).unwrap();
        assert_eq!(store.latest(false).unwrap(), None);
        let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let first = write(&store, 10, &body);
        let mut back = Vec::new();
        store
            .state_reader(&first)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, body);

        // A crash mid-write leaves only a temp file: the old snapshot stays
        // the latest, and the temp file is cleaned at start.
        let tmp = store.dir().join(format!("{}.tmp", snapshot_name(2, 20)));
        std::fs::write(&tmp, b"DQRSSNP1 half written").unwrap();
        assert_eq!(store.latest(false).unwrap().unwrap().header.index, 10);
        store.remove_temps().unwrap();
        assert!(!tmp.exists());

        // A damaged newest snapshot is an error, or set aside on request.
        let second = write(&store, 20, b"newer");
        assert_eq!(store.latest(false).unwrap().unwrap().header.index, 20);
        let mut bytes = std::fs::read(&second.path).unwrap();
        let n = bytes.len();
        bytes[n - 14] ^= 1;
        std::fs::write(&second.path, &bytes).unwrap();
        assert!(matches!(
            store.latest(false),
            Err(StorageError::Corrupt { .. })
        ));
        assert_eq!(store.latest(true).unwrap().unwrap().header.index, 10);
        assert!(store
            .dir()
            .join(format!("{}.corrupt", snapshot_name(2, 20)))
            .exists());

        // Pruning keeps the newest ones.
        write(&store, 30, b"a");
        write(&store, 40, b"b");
        store.prune(2).unwrap();
        // The removal runs on a background thread.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.find(2, 10).is_ok() {
            assert!(std::time::Instant::now() < deadline, "never removed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(store.find(2, 30).unwrap().header.index, 30);
        assert_eq!(store.find(2, 40).unwrap().header.index, 40);
    }

    #[test]
    fn incoming_snapshot_is_verified_before_it_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let a = SnapshotStore::new(Arc::new(RealDisk), &dir.path().join("a")).unwrap();
        let b = SnapshotStore::new(Arc::new(RealDisk), &dir.path().join("b")).unwrap();
        let info = write(&a, 7, &vec![9u8; 100_000]);
        let raw = std::fs::read(&info.path).unwrap();
        let mut good = b.incoming(2, 7).unwrap();
        for chunk in raw.chunks(4096) {
            good.write_chunk(chunk).unwrap();
        }
        assert_eq!(good.finish().unwrap().header, info.header);
        let mut bad = b.incoming(2, 8).unwrap();
        bad.write_chunk(&raw[..raw.len() - 1]).unwrap();
        assert!(bad.finish().is_err());
        assert!(b.find(2, 8).is_err(), "a bad stream is never published");
        // A stream broken off leaves no temp file behind.
        let mut broken = b.incoming(2, 9).unwrap();
        broken.write_chunk(&raw[..1000]).unwrap();
        drop(broken);
        let left: Vec<String> = std::fs::read_dir(b.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
