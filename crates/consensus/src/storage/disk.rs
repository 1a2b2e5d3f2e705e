//! The `Disk` seam: every byte the consensus crate reads or writes goes
//! through it, so the simulator can plug in a disk that tears writes, loses
//! unsynced data on a crash, and answers ENOSPC.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

/// An open file on a [`Disk`]. Positional I/O only: the log knows where every
/// record lives, and positional writes let it overwrite preallocated space.
pub trait DiskFile: Send {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A filesystem: the operations the log, hard-state file and snapshots need.
pub trait Disk: Send + Sync {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Atomically renames `from` to `to` (durable only after [`Disk::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of a directory, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file a second time, for writes that are durable
    /// when they return and skip the page cache (`O_DIRECT | O_DSYNC`), or
    /// `None` where the file system has no such writes (tmpfs). Every write
    /// through it starts at a multiple of [`DIRECT_ALIGN`], is a multiple
    /// of it long and comes from an [`AlignedBuf`]. The log appends through
    /// it: on a preallocated file one such write costs about two thirds of
    /// a buffered write and its fdatasync (DESIGN.md, performance model).
    fn open_direct(&self, _path: &Path) -> io::Result<Option<Box<dyn DiskFile>>> {
        Ok(None)
    }
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// Removes files nothing refers to any more, then syncs `dir`. Freeing
    /// a large file's blocks takes a good part of a second on a busy disk,
    /// which a thread that keeps raft's latency must not wait for: the
    /// removals may go on after this returns.
    fn remove_unused(&self, dir: &Path, paths: Vec<PathBuf>) -> io::Result<()> {
        for path in &paths {
            self.remove(path)?;
        }
        if !paths.is_empty() {
            self.sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Alignment of the offset, length and memory of a direct write
/// ([`Disk::open_direct`]): the largest logical block size of common disks.
pub const DIRECT_ALIGN: u64 = 4096;

/// A reusable buffer whose bytes start at a multiple of [`DIRECT_ALIGN`] in
/// memory, as direct writes need.
#[derive(Debug, Default)]
pub struct AlignedBuf(Vec<u8>);

impl AlignedBuf {
    /// `len` zero bytes starting at an aligned address.
    pub fn zeroed(&mut self, len: usize) -> &mut [u8] {
        let align = DIRECT_ALIGN as usize;
        self.0.clear();
        self.0.resize(len + align, 0);
        // `align_offset` on a byte pointer is exact outside const evaluation.
        let start = self.0.as_ptr().align_offset(align).min(align);
        &mut self.0[start..start + len]
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn DiskFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
        }
        done += n;
    }
    Ok(())
}

/// Writes a whole file atomically: temp file, fsync, rename, fsync the directory.
pub fn write_file_atomic(disk: &dyn Disk, path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = parent(path)?;
    let tmp = path.with_extension("tmp");
    let mut file = disk.create(&tmp)?;
    file.write_all_at(data, 0)?;
    file.sync_data()?;
    drop(file);
    disk.rename(&tmp, path)?;
    disk.sync_dir(&dir)
}

/// The parent directory of a path, as an owned path.
pub fn parent(path: &Path) -> io::Result<PathBuf> {
    path.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))
}

/// The real disk: `std::fs` plus fsync.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

struct RealFile(File);

impl DiskFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    #[cfg(target_os = "linux")]
    fn open_direct(&self, path: &Path) -> io::Result<Option<Box<dyn DiskFile>>> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
        {
            Ok(file) => Ok(Some(Box::new(RealFile(file)))),
            // The file system does not do direct I/O (tmpfs).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_unused(&self, dir: &Path, paths: Vec<PathBuf>) -> io::Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let dir = dir.to_path_buf();
        crate::background::spawn("raft-remove".into(), move || {
            for path in &paths {
                match std::fs::remove_file(path) {
                    // A previous removal of the same file is still running.
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        warn!(file = %path.display(), "cannot remove an old file: {e}");
                    }
                    _ => {}
                }
            }
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                warn!(dir = %dir.display(), "cannot sync after removing old files: {e}");
            }
        })?;
        Ok(())
    }
}
