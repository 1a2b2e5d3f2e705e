//! The consensus crate's `Disk` seam implemented over a [`SimDisk`].
//!
//! Paths become `/`-separated names on the simulated disk; directories are
//! implicit in names, plus the set created with `create_dir_all` (treated
//! as durable at once: the simulator tears data and names, not mkdir).
//! Open files are inode handles, so a file renamed while open (a snapshot
//! published under its final name) keeps receiving its writes.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dqlite_consensus::storage::{Disk, DiskFile, DIRECT_ALIGN};

use crate::disk::SimDisk;

/// A [`SimDisk`] seen through the consensus crate's `Disk` trait.
#[derive(Debug, Clone)]
pub struct SimFs {
    disk: SimDisk,
    dirs: Arc<Mutex<BTreeSet<String>>>,
    direct: bool,
}

fn name(path: &Path) -> String {
    path.to_string_lossy().trim_end_matches('/').to_string()
}

impl SimFs {
    /// The file system over `disk`.
    pub fn new(disk: SimDisk) -> Self {
        Self {
            disk,
            dirs: Arc::new(Mutex::new(BTreeSet::new())),
            direct: false,
        }
    }

    /// Offers direct writes ([`Disk::open_direct`]) when `on`, as a real
    /// disk does: each write is durable on return, and a misaligned one
    /// fails with `EINVAL`.
    pub fn with_direct(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    /// The disk underneath.
    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct SimFile {
    disk: SimDisk,
    inode: u64,
}

impl DiskFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let bytes = self.disk.read_inode(self.inode, offset, buf.len())?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        Ok(self.disk.write_inode(self.inode, offset, buf)?)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(self.disk.sync_inode(self.inode)?)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.len_inode(self.inode)?)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        Ok(self.disk.set_len_inode(self.inode, len)?)
    }
}

/// A file opened for direct writes.
struct SimDirectFile(SimFile);

impl DiskFile for SimDirectFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let align = DIRECT_ALIGN as usize;
        if offset % DIRECT_ALIGN != 0
            || buf.len() % align != 0
            || buf.as_ptr() as usize % align != 0
        {
            return Err(io::Error::from_raw_os_error(22)); // EINVAL, as O_DIRECT answers
        }
        self.0.write_all_at(buf, offset)?;
        self.0.sync_data()
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Disk for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut dirs = self.dirs();
        let mut current = String::new();
        for part in name(path).split('/') {
            if !current.is_empty() {
                current.push('/');
            }
            current.push_str(part);
            dirs.insert(current.clone());
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let inode = self.disk.open(&name(path))?;
        Ok(Box::new(SimFile {
            disk: self.disk.clone(),
            inode,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let inode = self.disk.create(&name(path))?;
        Ok(Box::new(SimFile {
            disk: self.disk.clone(),
            inode,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(self.disk.rename(&name(from), &name(to))?)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        Ok(self.disk.remove(&name(path))?)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = name(dir);
        let prefix = format!("{dir}/");
        let mut names = BTreeSet::new();
        let child = |full: &str| -> Option<String> {
            let rest = full.strip_prefix(&prefix)?;
            Some(rest.split('/').next().unwrap_or(rest).to_string())
        };
        for file in self.disk.list(&prefix) {
            names.extend(child(&file));
        }
        for sub in self.dirs().iter() {
            names.extend(child(sub));
        }
        if names.is_empty() && !self.dirs().contains(&dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, dir));
        }
        Ok(names.into_iter().collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        Ok(self.disk.sync_dir(&name(dir))?)
    }

    fn open_direct(&self, path: &Path) -> io::Result<Option<Box<dyn DiskFile>>> {
        if !self.direct {
            return Ok(None);
        }
        let inode = self.disk.open(&name(path))?;
        Ok(Some(Box::new(SimDirectFile(SimFile {
            disk: self.disk.clone(),
            inode,
        }))))
    }

    fn exists(&self, path: &Path) -> bool {
        let n = name(path);
        self.disk.exists(&n) || self.dirs().contains(&n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{CrashMode, DiskConfig};
    use crate::rng::SimRng;
    use std::path::PathBuf;

    #[test]
    fn files_and_directories_behave_like_a_file_system() {
        let fs = SimFs::new(SimDisk::new(DiskConfig::default(), SimRng::new(1)));
        let dir = PathBuf::from("raft/log");
        fs.create_dir_all(&dir).unwrap();
        assert!(fs.exists(Path::new("raft")));
        assert_eq!(fs.list(Path::new("raft")).unwrap(), vec!["log".to_string()]);
        let mut f = fs.create(&dir.join("seg-1")).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(f.read_at(&mut buf, 1).unwrap(), 4);
        assert_eq!(&buf[..4], b"ello");
        assert_eq!(fs.list(&dir).unwrap(), vec!["seg-1".to_string()]);
        fs.rename(&dir.join("seg-1"), &dir.join("seg-2")).unwrap();
        fs.disk().crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.list(&dir).unwrap(), vec!["seg-1".to_string()]);
        assert!(fs.list(Path::new("nowhere")).is_err());
        assert!(fs.open(Path::new("raft/missing")).is_err());
    }
}
