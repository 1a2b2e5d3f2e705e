//! The simulated disk.
//!
//! An in-memory file system that remembers, for every file, what a read sees
//! now and what would survive a power cut, so a crash can be played exactly:
//!
//! - file contents become durable only on [`SimDisk::sync`] (fsync);
//! - names (create, rename, remove) become durable only on
//!   [`SimDisk::sync_dir`], like a directory fsync on Linux;
//! - a crash ([`SimDisk::crash`]) throws away everything not durable, and in
//!   [`CrashMode::TornLastWrite`] lets a random prefix of each file's last
//!   unsynced write reach the platter — the torn tail a log must truncate;
//! - a capacity turns growth past it into `ENOSPC`, and injected I/O errors
//!   make a write or fsync fail without side effects.
//!
//! Files are inodes behind a name table so a rename followed by a crash
//! behaves like on a real file system: the old name comes back unless the
//! directory was synced. The handle is `Clone + Send + Sync` (an `Arc` over a
//! `Mutex`) so it can back a `Disk` implementation used from any thread; the
//! lock is never held across a call out.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rng::SimRng;

/// Why a simulated disk operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// No file by that name.
    #[error("no such file: {0}")]
    NotFound(String),
    /// The disk is full (`ENOSPC`); nothing was written.
    #[error("no space left on device")]
    NoSpace,
    /// An injected I/O error (`EIO`); nothing was written or synced.
    #[error("injected I/O error on {0}")]
    Injected(String),
}

impl From<DiskError> for io::Error {
    fn from(err: DiskError) -> Self {
        match err {
            DiskError::NotFound(name) => {
                io::Error::new(io::ErrorKind::NotFound, format!("no such file: {name}"))
            }
            // Raw errno so callers see the same kind as from a real full disk.
            DiskError::NoSpace => io::Error::from_raw_os_error(28),
            DiskError::Injected(_) => io::Error::from_raw_os_error(5),
        }
    }
}

/// What a crash keeps of unsynced data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    LoseUnsynced,
    /// Unsynced writes are lost except a random prefix (possibly empty, with
    /// the torn remainder zeroed or garbage) of each file's last write.
    TornLastWrite,
}

/// Fault settings of a simulated disk.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskConfig {
    /// Total bytes all files may hold; `None` for unlimited.
    pub capacity_bytes: Option<u64>,
    /// Probability that a write or fsync fails with an injected `EIO`.
    pub io_error_rate: f64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            capacity_bytes: None,
            io_error_rate: 0.0,
        }
    }
}

/// Counters of disk activity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Successful writes.
    pub writes: u64,
    /// Successful file fsyncs.
    pub syncs: u64,
    /// Successful directory fsyncs.
    pub dir_syncs: u64,
    /// Crashes played.
    pub crashes: u64,
    /// Crashes that kept a torn prefix of some write.
    pub torn_writes: u64,
    /// Operations failed by capacity or injection.
    pub failures: u64,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// The last write since the last fsync: `(offset, bytes)`.
    last_unsynced: Option<(u64, Vec<u8>)>,
}

#[derive(Debug)]
struct DiskState {
    config: DiskConfig,
    rng: SimRng,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    stats: DiskStats,
}

/// A shared handle to one node's simulated disk.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

impl SimDisk {
    /// An empty disk whose fault injection draws from `rng`.
    pub fn new(config: DiskConfig, rng: SimRng) -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskState {
                config,
                rng,
                next_inode: 1,
                inodes: BTreeMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                stats: DiskStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock leaves plain data behind; keep going
        // rather than turn one test failure into a cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the fault settings (e.g. free space again after `ENOSPC`).
    pub fn set_config(&self, config: DiskConfig) {
        self.lock().config = config;
    }

    /// Counters so far.
    pub fn stats(&self) -> DiskStats {
        self.lock().stats.clone()
    }

    /// Bytes currently held by all files (as reads see them).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    /// Whether `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.lock().names.contains_key(name)
    }

    /// Names starting with `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.lock()
            .names
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Create `name` empty, replacing any file by that name; returns its inode.
    pub fn create(&self, name: &str) -> Result<u64, DiskError> {
        let mut s = self.lock();
        s.inject(name)?;
        let inode = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(inode, Inode::default());
        s.names.insert(name.to_string(), inode);
        Ok(inode)
    }

    /// The inode behind `name`, for handle-based access that survives renames.
    pub fn open(&self, name: &str) -> Result<u64, DiskError> {
        self.lock().inode_id(name)
    }

    /// The whole content of `name`.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, DiskError> {
        let s = self.lock();
        Ok(s.inode(name)?.data.clone())
    }

    /// Up to `len` bytes of `name` from `offset` (short at end of file).
    pub fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let id = self.open(name)?;
        self.read_inode(id, offset, len)
    }

    /// Up to `len` bytes of inode `id` from `offset` (short at end of file).
    pub fn read_inode(&self, id: u64, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let s = self.lock();
        let data = &s.by_id(id)?.data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data[start..end].to_vec())
    }

    /// Length of `name` in bytes.
    pub fn len(&self, name: &str) -> Result<u64, DiskError> {
        let id = self.open(name)?;
        self.len_inode(id)
    }

    /// Length of inode `id` in bytes.
    pub fn len_inode(&self, id: u64) -> Result<u64, DiskError> {
        Ok(self.lock().by_id(id)?.data.len() as u64)
    }

    /// Write `bytes` at `offset` in `name`, zero-filling any gap.
    pub fn write_at(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        let id = self.open(name)?;
        self.write_inode(id, offset, bytes)
    }

    /// Write `bytes` at `offset` in inode `id`, zero-filling any gap.
    pub fn write_inode(&self, id: u64, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        let mut s = self.lock();
        s.inject("<inode>")?;
        let old_len = s.by_id(id)?.data.len() as u64;
        let new_len = old_len.max(offset.saturating_add(bytes.len() as u64));
        s.reserve(old_len, new_len)?;
        let inode = s.by_id_mut(id)?;
        write_into(&mut inode.data, offset, bytes);
        inode.last_unsynced = Some((offset, bytes.to_vec()));
        s.stats.writes += 1;
        Ok(())
    }

    /// Append `bytes` to `name`.
    pub fn append(&self, name: &str, bytes: &[u8]) -> Result<(), DiskError> {
        let len = self.len(name)?;
        self.write_at(name, len, bytes)
    }

    /// Cut `name` to `len` bytes (or zero-extend it).
    pub fn truncate(&self, name: &str, len: u64) -> Result<(), DiskError> {
        let id = self.open(name)?;
        self.set_len_inode(id, len)
    }

    /// Cut inode `id` to `len` bytes (or zero-extend it, as preallocation does).
    pub fn set_len_inode(&self, id: u64, len: u64) -> Result<(), DiskError> {
        let mut s = self.lock();
        s.inject("<inode>")?;
        let old_len = s.by_id(id)?.data.len() as u64;
        s.reserve(old_len, len)?;
        let inode = s.by_id_mut(id)?;
        inode
            .data
            .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
        // A length change is metadata: model it as losable, not tearable.
        inode.last_unsynced = None;
        Ok(())
    }

    /// fsync `name`: its current content survives any later crash.
    pub fn sync(&self, name: &str) -> Result<(), DiskError> {
        let id = self.open(name)?;
        self.sync_inode(id)
    }

    /// fsync inode `id`.
    pub fn sync_inode(&self, id: u64) -> Result<(), DiskError> {
        let mut s = self.lock();
        s.inject("<inode>")?;
        let inode = s.by_id_mut(id)?;
        inode.durable = inode.data.clone();
        inode.last_unsynced = None;
        s.stats.syncs += 1;
        Ok(())
    }

    /// fsync directory `dir` (`""` for the top level): the names directly
    /// in it — creations, renames into it, removals — survive a crash.
    pub fn sync_dir(&self, dir: &str) -> Result<(), DiskError> {
        let mut s = self.lock();
        s.inject(dir)?;
        let in_dir = |name: &String| parent_of(name) == dir;
        let current: Vec<(String, u64)> = s
            .names
            .iter()
            .filter(|(n, _)| in_dir(n))
            .map(|(n, &i)| (n.clone(), i))
            .collect();
        s.durable_names.retain(|n, _| !in_dir(n));
        s.durable_names.extend(current);
        s.stats.dir_syncs += 1;
        Ok(())
    }

    /// Rename `from` to `to`, replacing `to` (atomic, durable after `sync_dir`).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        let mut s = self.lock();
        s.inject(from)?;
        let id = s.inode_id(from)?;
        s.names.remove(from);
        s.names.insert(to.to_string(), id);
        Ok(())
    }

    /// Remove `name` (durable after `sync_dir`).
    pub fn remove(&self, name: &str) -> Result<(), DiskError> {
        let mut s = self.lock();
        s.inode_id(name)?;
        s.names.remove(name);
        Ok(())
    }

    /// Play a power cut: keep only what was durable, as `mode` says.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.lock();
        s.stats.crashes += 1;
        s.names = s.durable_names.clone();
        let live: Vec<u64> = s.names.values().copied().collect();
        s.inodes.retain(|id, _| live.contains(id));
        let ids: Vec<u64> = s.inodes.keys().copied().collect();
        for id in ids {
            let torn = match (
                mode,
                s.inodes.get(&id).and_then(|i| i.last_unsynced.clone()),
            ) {
                (CrashMode::TornLastWrite, Some((offset, bytes))) if !bytes.is_empty() => {
                    let keep = s.rng.index(bytes.len() + 1);
                    let garbage = s.rng.chance(0.5);
                    let mut tail = bytes[..keep].to_vec();
                    // A torn sector may hold the new bytes, zeros, or garbage
                    // beyond what was written; checksums must catch all three.
                    if keep < bytes.len() && garbage {
                        let extra = s.rng.index(bytes.len() - keep + 1);
                        for _ in 0..extra {
                            tail.push(s.rng.next_u64() as u8);
                        }
                    }
                    Some((offset, tail))
                }
                _ => None,
            };
            if torn.is_some() {
                s.stats.torn_writes += 1;
            }
            if let Some(inode) = s.inodes.get_mut(&id) {
                inode.data = inode.durable.clone();
                inode.last_unsynced = None;
                if let Some((offset, tail)) = torn {
                    if !tail.is_empty() {
                        write_into(&mut inode.data, offset, &tail);
                    }
                }
                inode.durable = inode.data.clone();
            }
        }
    }
}

impl DiskState {
    fn used(&self) -> u64 {
        self.names
            .values()
            .filter_map(|id| self.inodes.get(id))
            .map(|i| i.data.len() as u64)
            .sum()
    }

    fn inode_id(&self, name: &str) -> Result<u64, DiskError> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| DiskError::NotFound(name.to_string()))
    }

    fn inode(&self, name: &str) -> Result<&Inode, DiskError> {
        let id = self.inode_id(name)?;
        self.inodes
            .get(&id)
            .ok_or_else(|| DiskError::NotFound(name.to_string()))
    }

    fn by_id(&self, id: u64) -> Result<&Inode, DiskError> {
        self.inodes
            .get(&id)
            .ok_or_else(|| DiskError::NotFound(format!("inode {id}")))
    }

    fn by_id_mut(&mut self, id: u64) -> Result<&mut Inode, DiskError> {
        self.inodes
            .get_mut(&id)
            .ok_or_else(|| DiskError::NotFound(format!("inode {id}")))
    }

    /// Refuse growth from `old_len` to `new_len` past the capacity.
    fn reserve(&mut self, old_len: u64, new_len: u64) -> Result<(), DiskError> {
        if let Some(capacity) = self.config.capacity_bytes {
            if new_len > old_len && self.used() - old_len + new_len > capacity {
                self.stats.failures += 1;
                return Err(DiskError::NoSpace);
            }
        }
        Ok(())
    }

    fn inject(&mut self, name: &str) -> Result<(), DiskError> {
        let rate = self.config.io_error_rate;
        if self.rng.chance(rate) {
            self.stats.failures += 1;
            return Err(DiskError::Injected(name.to_string()));
        }
        Ok(())
    }
}

/// The directory part of a `/`-separated name (`""` at the top level).
pub fn parent_of(name: &str) -> &str {
    name.rfind('/').map_or("", |i| &name[..i])
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> SimDisk {
        SimDisk::new(DiskConfig::default(), SimRng::new(9))
    }

    #[test]
    fn synced_data_survives_a_crash_unsynced_does_not() {
        let d = disk();
        d.create("log").unwrap();
        d.sync_dir("").unwrap();
        d.append("log", b"hello").unwrap();
        d.sync("log").unwrap();
        d.append("log", b" world").unwrap();
        assert_eq!(d.read("log").unwrap(), b"hello world");
        d.crash(CrashMode::LoseUnsynced);
        assert_eq!(d.read("log").unwrap(), b"hello");
    }

    #[test]
    fn unsynced_names_vanish_and_renames_roll_back() {
        let d = disk();
        d.create("meta").unwrap();
        d.append("meta", b"v1").unwrap();
        d.sync("meta").unwrap();
        d.sync_dir("").unwrap();
        d.create("meta.tmp").unwrap();
        d.append("meta.tmp", b"v2").unwrap();
        d.sync("meta.tmp").unwrap();
        d.rename("meta.tmp", "meta").unwrap();
        assert_eq!(d.read("meta").unwrap(), b"v2");
        d.crash(CrashMode::LoseUnsynced);
        assert_eq!(d.read("meta").unwrap(), b"v1");
        assert!(!d.exists("meta.tmp"));
    }

    #[test]
    fn rename_after_dir_sync_is_durable() {
        let d = disk();
        d.create("a.tmp").unwrap();
        d.append("a.tmp", b"x").unwrap();
        d.sync("a.tmp").unwrap();
        d.rename("a.tmp", "a").unwrap();
        d.sync_dir("").unwrap();
        d.crash(CrashMode::TornLastWrite);
        assert_eq!(d.read("a").unwrap(), b"x");
        assert_eq!(d.list(""), vec!["a".to_string()]);
    }

    #[test]
    fn torn_last_write_keeps_a_prefix_of_it_at_most_plus_garbage() {
        let mut saw_partial = false;
        for seed in 0..200 {
            let d = SimDisk::new(DiskConfig::default(), SimRng::new(seed));
            d.create("seg").unwrap();
            d.sync_dir("").unwrap();
            d.append("seg", &[1; 16]).unwrap();
            d.sync("seg").unwrap();
            d.append("seg", &[2; 16]).unwrap();
            d.crash(CrashMode::TornLastWrite);
            let data = d.read("seg").unwrap();
            assert_eq!(&data[..16], &[1; 16], "synced data must survive");
            assert!(data.len() <= 32);
            if data.len() > 16 && data.len() < 32 {
                saw_partial = true;
            }
        }
        assert!(saw_partial, "some crash should tear the last write");
    }

    #[test]
    fn lose_unsynced_never_tears() {
        let d = disk();
        d.create("seg").unwrap();
        d.sync_dir("").unwrap();
        d.append("seg", &[2; 16]).unwrap();
        d.crash(CrashMode::LoseUnsynced);
        assert!(d.read("seg").unwrap().is_empty());
        assert_eq!(d.stats().torn_writes, 0);
    }

    #[test]
    fn capacity_gives_enospc_without_partial_write() {
        let d = SimDisk::new(
            DiskConfig {
                capacity_bytes: Some(10),
                io_error_rate: 0.0,
            },
            SimRng::new(1),
        );
        d.create("f").unwrap();
        d.append("f", &[0; 8]).unwrap();
        assert_eq!(d.append("f", &[0; 3]), Err(DiskError::NoSpace));
        assert_eq!(d.len("f").unwrap(), 8);
        // Overwriting in place needs no new space.
        d.write_at("f", 0, &[1; 8]).unwrap();
        let err: io::Error = DiskError::NoSpace.into();
        assert_eq!(err.raw_os_error(), Some(28));
        d.set_config(DiskConfig::default());
        d.append("f", &[0; 3]).unwrap();
    }

    #[test]
    fn injected_errors_have_no_side_effects() {
        let d = SimDisk::new(
            DiskConfig {
                capacity_bytes: None,
                io_error_rate: 1.0,
            },
            SimRng::new(1),
        );
        assert!(matches!(d.create("f"), Err(DiskError::Injected(_))));
        assert!(!d.exists("f"));
        assert!(d.stats().failures > 0);
    }

    #[test]
    fn directory_sync_covers_only_its_own_directory() {
        let d = disk();
        d.create("a/x").unwrap();
        d.create("b/y").unwrap();
        d.sync_dir("a").unwrap();
        d.crash(CrashMode::LoseUnsynced);
        assert!(d.exists("a/x"));
        assert!(!d.exists("b/y"));
        assert_eq!(parent_of("a/b/c"), "a/b");
        assert_eq!(parent_of("c"), "");
    }

    #[test]
    fn handles_follow_the_inode_across_renames() {
        let d = disk();
        let id = d.create("snap/tmp").unwrap();
        d.rename("snap/tmp", "snap/final").unwrap();
        d.write_inode(id, 0, b"abc").unwrap();
        d.sync_inode(id).unwrap();
        assert_eq!(d.read("snap/final").unwrap(), b"abc");
        assert_eq!(d.len_inode(id).unwrap(), 3);
        assert_eq!(d.read_inode(id, 1, 5).unwrap(), b"bc");
        d.set_len_inode(id, 1).unwrap();
        assert_eq!(d.read("snap/final").unwrap(), b"a");
    }

    #[test]
    fn read_at_and_truncate() {
        let d = disk();
        d.create("f").unwrap();
        d.write_at("f", 4, b"abcd").unwrap();
        assert_eq!(d.read("f").unwrap(), b"\0\0\0\0abcd");
        assert_eq!(d.read_at("f", 5, 10).unwrap(), b"bcd");
        assert_eq!(d.read_at("f", 50, 10).unwrap(), b"");
        d.truncate("f", 5).unwrap();
        assert_eq!(d.read("f").unwrap(), b"\0\0\0\0a");
        d.remove("f").unwrap();
        assert_eq!(d.read("f"), Err(DiskError::NotFound("f".into())));
    }
}
