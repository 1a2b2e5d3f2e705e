//! A SQLite VFS with a safe face. [`Backend`] and [`File`] are plain Rust
//! traits; `ffi.rs`, the only unsafe code in the crate, turns them into
//! the C structures SQLite calls.
//!
//! Choices written down once:
//! - Every file SQLite opens is ours: the main database files come from
//!   the [`Backend`]; journals and temporary files live in memory
//!   ([`MemFile`]). Nothing touches the disk through this VFS.
//! - A panic inside a callback is caught at the shim and becomes
//!   `SQLITE_IOERR`, so a bug never unwinds into C.
//! - A registration is never freed: SQLite keeps raw pointers to the VFS in
//!   every connection opened through it, and nothing tells us when the last
//!   one is gone. Dropping a [`Registration`] unregisters the name; the few
//!   hundred bytes behind it stay allocated for the life of the process.

mod ffi;

use std::ffi::c_int;
use std::sync::Arc;

pub use ffi::Registration;

/// SQLite result codes used by the VFS layer.
pub mod code {
    #![allow(missing_docs)]
    use std::ffi::c_int;
    pub const OK: c_int = 0;
    pub const BUSY: c_int = 5;
    pub const IOERR: c_int = 10;
    pub const NOTFOUND: c_int = 12;
    pub const FULL: c_int = 13;
    pub const CANTOPEN: c_int = 14;
    pub const IOERR_READ: c_int = 10 | (1 << 8);
    pub const IOERR_SHORT_READ: c_int = 10 | (2 << 8);
    pub const IOERR_WRITE: c_int = 10 | (3 << 8);
    pub const IOERR_NOT_LEADER: c_int = 10 | (40 << 8);
    pub const IOERR_LEADERSHIP_LOST: c_int = 10 | (41 << 8);
    /// dqlite-rs: the commit was rejected because it was built on a version
    /// that another entry replaced; nothing was applied. IOERR-class so
    /// that SQLite drops its page cache (the server answers SQLITE_BUSY).
    pub const IOERR_STALE: c_int = 10 | (42 << 8);
}

/// SQLite lock levels (`SQLITE_LOCK_*`).
pub mod lock {
    #![allow(missing_docs)]
    use std::ffi::c_int;
    pub const NONE: c_int = 0;
    pub const SHARED: c_int = 1;
    pub const RESERVED: c_int = 2;
    pub const PENDING: c_int = 3;
    pub const EXCLUSIVE: c_int = 4;
}

/// `SQLITE_FCNTL_COMMIT_PHASETWO`: sent once a transaction has committed
/// and before the file is unlocked, whatever `PRAGMA synchronous` says.
/// In rollback-journal mode a shrinking commit truncates the file *after*
/// its `xSync`, so this, not the sync, is the point where the transaction
/// is complete; a rollback never sends it.
pub const FCNTL_COMMIT_PHASETWO: c_int = 22;

/// A SQLite result code for a failed file operation.
pub type Code = c_int;

/// Where main database files come from.
pub trait Backend: Send + Sync + 'static {
    /// Opens main database `name`, creating it (empty) if needed.
    fn open_main(&self, name: &str) -> Result<Box<dyn File>, Code>;
    /// Whether main database `name` exists.
    fn exists(&self, name: &str) -> bool;
}

/// One open file. Methods mirror `sqlite3_io_methods`.
pub trait File: Send {
    /// Fills `buf` from `offset`. Returns `Ok(false)` for a short read (the
    /// shim zero-fills and reports `SQLITE_IOERR_SHORT_READ`).
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<bool, Code>;
    /// Writes `buf` at `offset`.
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), Code>;
    /// Sets the file size.
    fn truncate(&mut self, size: u64) -> Result<(), Code>;
    /// Makes writes durable.
    fn sync(&mut self) -> Result<(), Code>;
    /// The file size in bytes.
    fn size(&self) -> Result<u64, Code>;
    /// Raises the lock to `level` or fails with `SQLITE_BUSY`.
    fn lock(&mut self, level: c_int) -> Result<(), Code>;
    /// Lowers the lock to `level`.
    fn unlock(&mut self, level: c_int) -> Result<(), Code>;
    /// Whether any handle holds a RESERVED or higher lock.
    fn check_reserved(&self) -> bool;
    /// A file control; `None` means not handled (`SQLITE_NOTFOUND`).
    fn control(&mut self, op: c_int) -> Option<Result<(), Code>>;
}

/// A private in-memory file: journals, temporary databases, sort spills.
#[derive(Debug, Default)]
pub struct MemFile {
    data: Vec<u8>,
}

impl File for MemFile {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<bool, Code> {
        buf.fill(0);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let end = start.saturating_add(buf.len()).min(self.data.len());
        buf[..end - start].copy_from_slice(&self.data[start..end]);
        Ok(end - start == buf.len())
    }
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), Code> {
        let start = usize::try_from(offset).map_err(|_| code::IOERR_WRITE)?;
        let end = start.checked_add(buf.len()).ok_or(code::IOERR_WRITE)?;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn truncate(&mut self, size: u64) -> Result<(), Code> {
        self.data
            .truncate(usize::try_from(size).unwrap_or(usize::MAX));
        Ok(())
    }
    fn sync(&mut self) -> Result<(), Code> {
        Ok(())
    }
    fn size(&self) -> Result<u64, Code> {
        Ok(self.data.len() as u64)
    }
    fn lock(&mut self, _level: c_int) -> Result<(), Code> {
        Ok(())
    }
    fn unlock(&mut self, _level: c_int) -> Result<(), Code> {
        Ok(())
    }
    fn check_reserved(&self) -> bool {
        false
    }
    fn control(&mut self, _op: c_int) -> Option<Result<(), Code>> {
        None
    }
}

/// Chooses SQLite's threading mode for the process: serialised, or
/// multi-thread (no per-connection mutexes; each connection used by one
/// thread at a time, as the server does). Only possible before SQLite is
/// first used; later it fails with `SQLITE_MISUSE` (21).
pub fn set_threading_mode(serialized: bool) -> Result<(), Code> {
    ffi::config_threading(serialized)
}

/// Registers `backend` as a SQLite VFS called `name` (not the default).
pub fn register(name: &str, backend: Arc<dyn Backend>) -> Result<Registration, Code> {
    ffi::register(name, backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_file_reads_short_past_the_end() {
        let mut f = MemFile::default();
        f.write(b"hello", 2).unwrap();
        assert_eq!(f.size().unwrap(), 7);
        let mut buf = [9u8; 10];
        assert!(!f.read(&mut buf, 0).unwrap());
        assert_eq!(&buf, b"\0\0hello\0\0\0");
        f.truncate(3).unwrap();
        let mut buf = [9u8; 3];
        assert!(f.read(&mut buf, 0).unwrap());
        assert_eq!(&buf, b"\0\0h");
    }
}
