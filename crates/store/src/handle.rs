//! One SQLite file handle on a replicated database: its lock level, the
//! version it reads (its read snapshot), and the pages it has written but
//! not committed (its overlay). The overlay is handed to consensus at the
//! commit point and dropped on rollback.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::Arc;

use crate::entry::{valid_page_size, Entry};
use crate::pages::{read_at, Version};
use crate::vfs::{code, lock, Code, File, FCNTL_COMMIT_PHASETWO};
use crate::{Db, ProposeError, Shared};

/// Pages written by this handle's open write transaction.
#[derive(Debug, Default)]
struct Overlay {
    pages: BTreeMap<u32, Arc<[u8]>>,
    page_size: Option<u32>,
    /// Size in pages once the transaction changed it.
    pages_after: Option<u32>,
}

pub(crate) struct MainFile {
    shared: Arc<Shared>,
    db: Arc<Db>,
    id: u64,
    level: c_int,
    snapshot: Option<Arc<Version>>,
    overlay: Overlay,
}

impl MainFile {
    pub(crate) fn new(shared: Arc<Shared>, db: Arc<Db>, id: u64) -> Self {
        Self {
            shared,
            db,
            id,
            level: lock::NONE,
            snapshot: None,
            overlay: Overlay::default(),
        }
    }

    /// The committed version this handle reads under.
    fn base(&self) -> Arc<Version> {
        self.snapshot.clone().unwrap_or_else(|| self.db.current())
    }

    fn page_size(&self, base: &Version) -> u32 {
        self.overlay.page_size.unwrap_or(base.page_size)
    }

    fn pages(&self, base: &Version) -> u32 {
        self.overlay.pages_after.unwrap_or(base.pages)
    }

    /// The commit point: replicate the overlay and wait until it is
    /// applied. Whatever the outcome, the overlay is spent.
    fn commit(&mut self) -> Result<(), Code> {
        let overlay = std::mem::take(&mut self.overlay);
        let base = self.base();
        let page_size = overlay.page_size.unwrap_or(base.page_size);
        let pages_after = overlay.pages_after.unwrap_or(base.pages);
        // SQLite rewrites pages it did not change (journal playback, spills
        // of clean pages); only real changes are replicated.
        let same_size = page_size == base.page_size;
        let pages: Vec<(u32, Vec<u8>)> = overlay
            .pages
            .into_iter()
            .filter(|(n, p)| !(same_size && matches!(base.page(*n), Ok(Some(b)) if b[..] == p[..])))
            .map(|(n, p)| (n, p.to_vec()))
            .collect();
        if pages.is_empty() && pages_after == base.pages && same_size {
            return Ok(());
        }
        let entry = Entry {
            database: self.db.name.clone(),
            base: base.seq,
            base_id: base.id,
            id: crate::entry::new_id(),
            page_size,
            pages_after,
            pages,
        };
        // SQLite reads nothing while the commit is in flight: release the
        // old version so that a disk-mode checkpoint triggered by this very
        // entry's apply is not held back by it.
        drop(base);
        self.snapshot = None;
        let outcome = self.shared.commit(entry);
        // We hold the write lock, so on success the current version is
        // exactly our commit; read it from now on.
        self.snapshot = Some(self.db.current());
        match outcome {
            Ok(true) => Ok(()),
            // Built on a version that is no longer current (another leader's
            // entry was applied underneath): nothing was applied. SQLite has
            // already marked our pages clean, and the entry that won raised
            // the change counter from the same base, so only an IOERR-class
            // code makes it drop them (pager_error) instead of reading them.
            Ok(false) => Err(code::IOERR_STALE),
            Err(ProposeError::NotLeader) => Err(code::IOERR_NOT_LEADER),
            // The entry may or may not commit later: the outcome is unknown.
            Err(ProposeError::LeadershipLost | ProposeError::Timeout) => {
                Err(code::IOERR_LEADERSHIP_LOST)
            }
            Err(ProposeError::Other(msg)) => {
                tracing::warn!(database = %self.db.name, "commit failed: {msg}");
                Err(code::IOERR)
            }
        }
    }
}

impl File for MainFile {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<bool, Code> {
        let base = self.base();
        let overlay = &self.overlay.pages;
        let got = read_at(
            &base,
            &|n| overlay.get(&n).cloned(),
            self.page_size(&base),
            self.pages(&base),
            buf,
            offset,
        )
        .map_err(|e| {
            tracing::error!(database = %self.db.name, "cannot read the database file: {e}");
            code::IOERR_READ
        })?;
        Ok(got == buf.len())
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), Code> {
        let base = self.base();
        let len = u32::try_from(buf.len()).map_err(|_| code::IOERR_WRITE)?;
        // Rollback-journal mode writes whole pages of the main database; a
        // new size is a page size change (VACUUM), which rewrites them all.
        if !valid_page_size(len) || !offset.is_multiple_of(u64::from(len)) {
            return Err(code::IOERR_WRITE);
        }
        let pgno = u32::try_from(offset / u64::from(len) + 1).map_err(|_| code::IOERR_WRITE)?;
        let pages = self.pages(&base).max(pgno);
        if self.overlay.page_size.is_some_and(|ps| ps != len) {
            self.overlay.pages.clear();
        }
        self.overlay.page_size = Some(len);
        self.overlay.pages.insert(pgno, Arc::from(buf));
        self.overlay.pages_after = Some(pages);
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<(), Code> {
        let base = self.base();
        let ps = u64::from(self.page_size(&base));
        if ps == 0 {
            return if size == 0 { Ok(()) } else { Err(code::IOERR) };
        }
        let pages = u32::try_from(size / ps).map_err(|_| code::IOERR)?;
        self.overlay.pages.retain(|n, _| *n <= pages);
        self.overlay.pages_after = Some(pages);
        if self.overlay.page_size.is_none() {
            self.overlay.page_size = Some(base.page_size);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Code> {
        // Durability comes from consensus at FCNTL_COMMIT_PHASETWO.
        Ok(())
    }

    fn size(&self) -> Result<u64, Code> {
        let base = self.base();
        Ok(u64::from(self.pages(&base)) * u64::from(self.page_size(&base)))
    }

    fn lock(&mut self, level: c_int) -> Result<(), Code> {
        if level <= self.level {
            return Ok(());
        }
        if level == lock::SHARED {
            // The read snapshot: what this read transaction will see.
            self.snapshot = Some(self.db.current());
        } else if self.level < lock::RESERVED {
            let mut st = self.db.lock();
            if st.writer.is_some_and(|w| w != self.id) {
                return Err(code::BUSY);
            }
            // Writing on top of an old snapshot would lose the commits made
            // since; SQLite answers BUSY and the transaction starts over.
            let current = st.current.seq;
            if self.snapshot.as_ref().map(|s| s.seq) != Some(current) {
                return Err(code::BUSY);
            }
            st.writer = Some(self.id);
        }
        self.level = level;
        Ok(())
    }

    fn unlock(&mut self, level: c_int) -> Result<(), Code> {
        if self.level >= lock::RESERVED && level < lock::RESERVED {
            let mut st = self.db.lock();
            if st.writer == Some(self.id) {
                st.writer = None;
            }
            drop(st);
            self.overlay = Overlay::default();
        }
        match level {
            lock::NONE => self.snapshot = None,
            lock::SHARED if self.level > lock::SHARED => self.snapshot = Some(self.db.current()),
            _ => {}
        }
        self.level = level;
        Ok(())
    }

    fn check_reserved(&self) -> bool {
        self.db.lock().writer.is_some()
    }

    fn control(&mut self, op: c_int) -> Option<Result<(), Code>> {
        (op == FCNTL_COMMIT_PHASETWO).then(|| self.commit())
    }
}

impl Drop for MainFile {
    fn drop(&mut self) {
        let mut st = self.db.lock();
        if st.writer == Some(self.id) {
            st.writer = None;
        }
    }
}
