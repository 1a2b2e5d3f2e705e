//! One SQLite file handle on a replicated database: its lock level, the
//! version it reads (its read snapshot), and the pages it has written but
//! not committed (its overlay). The overlay is handed to consensus at the
//! commit point and dropped on rollback.
//!
//! SQLite's page cache outlives a transaction: at the start of the next one
//! SQLite reads 16 bytes at offset 24 (change counter and friends) and
//! keeps its cache if they did not change. A version that never commits
//! (a rejected or dropped speculative entry) can carry the same bytes as
//! the version that replaced it, so a handle that saw one answers that
//! read with bytes that differ, and SQLite drops its cache.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::Arc;
use std::time::Instant;

use crate::chain::{self, SettleError, Spec, Ticket};
use crate::entry::{valid_page_size, Entry};
use crate::pages::{read_at, Version};
use crate::vfs::{code, lock, Code, File, FCNTL_COMMIT_PHASETWO};
use crate::{Db, Shared};

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
    /// The newest speculative entry this handle read or wrote: if it fails,
    /// SQLite's cache holds pages that never committed.
    seen: Option<Arc<Ticket>>,
    /// Make SQLite's next cache check fail (see the module comment).
    reset_cache: bool,
}

/// Where SQLite reads the bytes that tell it whether its cache is valid.
const CACHE_CHECK: (u64, usize) = (24, 16);

impl MainFile {
    pub(crate) fn new(shared: Arc<Shared>, db: Arc<Db>, id: u64) -> Self {
        Self {
            shared,
            db,
            id,
            level: lock::NONE,
            snapshot: None,
            overlay: Overlay::default(),
            seen: None,
            reset_cache: false,
        }
    }

    /// Takes the read snapshot: the head of the database's chain. A
    /// speculative head is recorded so the statement's response waits for it.
    /// A read-only statement may take the committed version instead
    /// ([`chain::read_committed`]).
    fn take_snapshot(&mut self) {
        if self.seen.as_ref().is_some_and(|t| t.failure().is_some()) {
            self.reset_cache = true;
            self.seen = None;
        }
        let (version, ticket) = {
            let mut st = self.db.lock();
            if let Some(deadline) = Instant::now().checked_sub(chain::IN_FLIGHT_LIMIT) {
                st.chain.expire(deadline);
            }
            if chain::reads_committed() && self.level == lock::NONE {
                let current = Arc::clone(&st.current);
                st.track(&current);
                (current, None)
            } else {
                st.head()
            }
        };
        if let Some(t) = ticket {
            chain::touch(&t, false);
            self.seen = Some(t);
        }
        self.snapshot = Some(version);
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

    /// The commit point: the overlay becomes the next entry of the
    /// database's chain and is handed to consensus; the response of the
    /// statement waits for it ([`chain::settle`]), the next transaction does
    /// not. Whatever the outcome, the overlay is spent.
    fn commit(&mut self) -> Result<(), Code> {
        let overlay = std::mem::take(&mut self.overlay);
        let base = self.base();
        // The canary: name the head as the base, whatever this transaction
        // read, so a lost update passes every later check.
        #[cfg(feature = "sim-bugs")]
        let base = if self.shared.broken() == crate::Broken::SkipBaseCheck {
            self.db.lock().head().0
        } else {
            base
        };
        let page_size = overlay.page_size.unwrap_or(base.page_size);
        let pages_after = overlay.pages_after.unwrap_or(base.pages);
        // SQLite rewrites pages it did not change (journal playback, spills
        // of clean pages); only real changes are replicated.
        // Each changed page travels as a patch of the base's page where
        // that is smaller (`Entry::encode_patches`), except in disk mode:
        // after a crash in a checkpoint its files may hold pages newer
        // than the log replays from (see `disk`), which a patch could not
        // be rebuilt on; only a whole page shadows them.
        let patches = !self.shared.is_disk();
        let same_size = page_size == base.page_size;
        let mut pages = Vec::with_capacity(overlay.pages.len());
        let mut olds = Vec::with_capacity(overlay.pages.len());
        for (n, p) in overlay.pages {
            let old = match same_size.then(|| base.page(n)) {
                Some(Ok(Some(old))) if old[..] == p[..] => continue,
                Some(Ok(Some(old))) => Some(old),
                Some(Ok(None)) => patches.then(|| Arc::from(vec![0; p.len()])),
                // A page size change, or a base page that cannot be read:
                // the page goes whole.
                None | Some(Err(_)) => None,
            };
            pages.push((n, p));
            olds.push(old);
        }
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
        let encoded = if patches {
            entry.encode_patches(&olds)
        } else {
            entry.encode()
        };
        drop(olds);
        let ticket = Arc::new(Ticket::default());
        {
            let mut st = self.db.lock();
            let (head, _) = st.head();
            // An entry applied since RESERVED dropped the chain under us:
            // this one would be rejected, so it is not even proposed.
            let Some(next) = (head.seq, head.id)
                .eq(&(base.seq, base.id))
                .then(|| base.apply(&entry))
                .flatten()
            else {
                return Err(code::IOERR_STALE);
            };
            st.chain.push(Spec {
                id: entry.id,
                version: Arc::new(next),
                ticket: Arc::clone(&ticket),
                handed: Instant::now(),
            });
        }
        // Release the old version so that a disk-mode checkpoint triggered
        // by this very entry's apply is not held back by it.
        drop(base);
        self.snapshot = None;
        self.shared.propose(&self.db, entry, encoded);
        #[cfg(feature = "sim-bugs")]
        if self.shared.broken() == crate::Broken::AckBeforeCommit {
            ticket.resolve(Ok(()));
        }
        chain::touch(&ticket, true);
        // A failure known at once is answered at once. SQLite has already
        // marked our pages clean and another entry may have raised the
        // change counter from the same base, so only an IOERR-class code
        // makes it drop them (pager_error) instead of reading them later.
        let failure = ticket.failure();
        self.seen = Some(ticket);
        self.snapshot = Some(self.db.lock().head().0);
        match failure {
            None => Ok(()),
            Some(SettleError::Stale) => Err(code::IOERR_STALE),
            Some(SettleError::NotLeader) => Err(code::IOERR_NOT_LEADER),
            Some(SettleError::LeadershipLost) => Err(code::IOERR_LEADERSHIP_LOST),
            // SQLITE_FULL also puts SQLite's pager in its error state, so
            // the pages marked clean are dropped as with IOERR.
            Some(SettleError::DiskFull) => Err(code::FULL),
            Some(SettleError::Other(msg)) => {
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
        if self.reset_cache && (offset, buf.len()) == CACHE_CHECK {
            self.reset_cache = false;
            buf.iter_mut().for_each(|b| *b = !*b);
        }
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
            self.take_snapshot();
        } else if self.level < lock::RESERVED {
            let mut st = self.db.lock();
            if st.writer.is_some_and(|w| w != self.id) {
                return Err(code::BUSY);
            }
            // Writing on top of an old snapshot would lose the commits made
            // since; SQLite answers BUSY and the transaction starts over.
            let (head, _) = st.head();
            let stale = self.snapshot.as_ref().map(|s| (s.seq, s.id)) != Some((head.seq, head.id));
            #[cfg(feature = "sim-bugs")]
            let stale = stale && self.shared.broken() != crate::Broken::SkipBaseCheck;
            if stale {
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
            lock::NONE => {
                self.snapshot = None;
                self.reset_cache = false;
            }
            lock::SHARED if self.level > lock::SHARED => self.take_snapshot(),
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
