//! Disk-mode checkpoints: every database's changed pages written into its
//! file, then the record saying which index the files hold.
//!
//! The versions to write are captured on the consensus driver thread
//! between two applies (pointers, no copies), so they are all of one
//! applied index; the writing and fsyncing happen on a thread of their own
//! while entries go on being applied. Versions at or after the captured
//! one hold every captured page in memory, so no reader reads a page from
//! the file while it is written. Once the record is durable, the current
//! versions drop the pages the file now holds unchanged.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use imbl::OrdMap;
use tracing::warn;

use crate::disk::{BaseFile, Checkpoint, CheckpointDb};
use crate::pages::Version;
use crate::{Db, Shared};

/// A checkpoint that failed is not tried again for this long (a full disk
/// would otherwise be retried at every apply).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Every database's version at one applied index.
struct Capture {
    applied: u64,
    generation: u64,
    dbs: Vec<(Arc<Db>, Arc<Version>)>,
    /// Bytes of changed pages in memory when captured.
    pending: u64,
}

/// Progress of checkpoints, shared by the store and its writer thread.
#[derive(Default)]
pub(crate) struct Checkpoints {
    /// A checkpoint is being written (one at a time).
    running: AtomicBool,
    /// Held while a checkpoint writes, and by a restore switching the
    /// generation of files, so the two never overlap.
    writing: Mutex<()>,
    /// The applied index the files were last made durable at.
    pub(crate) durable: AtomicU64,
    /// What the last background checkpoint failed with, reported once.
    failed: Mutex<Option<(String, Instant)>>,
}

impl Checkpoints {
    pub(crate) fn new(durable: u64) -> Self {
        let c = Self::default();
        c.durable.store(durable, Ordering::Relaxed);
        c
    }

    /// Excludes checkpoints (a restore switching generations).
    pub(crate) fn exclude(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error of the last background checkpoint, once.
    pub(crate) fn take_error(&self) -> Option<String> {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .as_mut()
            .and_then(|(e, _)| (!e.is_empty()).then(|| std::mem::take(e)))
    }

    fn backing_off(&self) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < RETRY_AFTER)
    }

    fn set_failed(&self, why: String) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((why, Instant::now()));
    }
}

impl Shared {
    /// Captures every database's current version, or `None` if a reader
    /// still holds an older version (the file under it must not change).
    /// Call between applies, so all of them are of index `applied`.
    fn capture(&self, applied: u64) -> Option<Capture> {
        let dbs: Vec<Arc<Db>> = self.dbs().values().cloned().collect();
        let mut out = Vec::with_capacity(dbs.len());
        for db in dbs {
            let mut st = db.lock();
            st.older.retain(|w| w.strong_count() > 0);
            st.older_live = st.older.len();
            let seq = st.current.seq;
            // A version at the current sequence holds every page changed
            // since the last checkpoint (the current one, or the one a
            // checkpoint replaced); only older ones read stale pages from
            // the file. Speculative versions above it only add pages.
            if st
                .older
                .iter()
                .any(|w| w.upgrade().is_some_and(|o| o.seq < seq))
            {
                return None;
            }
            let v = Arc::clone(&st.current);
            drop(st);
            out.push((db, v));
        }
        Some(Capture {
            applied,
            generation: self.generation(),
            dbs: out,
            pending: self.pending.load(Ordering::Relaxed),
        })
    }

    /// Writes `c` into the files and the record, then lets the current
    /// versions read what it wrote from the files. False if a restore
    /// switched to other files meanwhile (nothing written).
    fn write(&self, c: Capture) -> io::Result<bool> {
        let Some(disk) = &self.disk else {
            return Ok(true);
        };
        let _writing = self.checkpoints.exclude();
        if c.generation != self.generation() {
            return Ok(false);
        }
        let mut record = Checkpoint {
            applied: c.applied,
            generation: c.generation,
            databases: Vec::with_capacity(c.dbs.len()),
            sums: true,
        };
        let mut written = Vec::new();
        for (db, v) in &c.dbs {
            if v.page_size != 0 && (!v.data.is_empty() || v.base.is_none()) {
                let file = match &v.base {
                    Some(f) => Arc::clone(f),
                    None => Arc::new(BaseFile::create(&disk.db_path(&db.name, c.generation)?)?),
                };
                let changed = v.data.iter().map(|(pgno, page)| (*pgno, &page[..]));
                file.checkpoint(changed, v.pages, v.page_size, c.applied)?;
                written.push((db, v, file));
            }
            record.databases.push(CheckpointDb {
                name: db.name.clone(),
                seq: v.seq,
                id: v.id,
                page_size: v.page_size,
                pages: v.pages,
            });
        }
        disk.write_record(&record)?;
        for (db, v, file) in written {
            rebase(db, v, file);
        }
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(c.pending))
            });
        self.checkpoints
            .durable
            .fetch_max(c.applied, Ordering::Relaxed);
        Ok(true)
    }

    /// Disk mode: writes every database's in-memory pages into its file,
    /// fsyncs, and records that the files reflect index `applied`, before
    /// returning (waiting for one being written in the background). False
    /// (and no record) if a reader still holds a version older than the
    /// current one; the caller tries again later.
    pub(crate) fn checkpoint(&self, applied: u64) -> io::Result<bool> {
        while self.checkpoints.running.swap(true, Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let result = match self.capture(applied) {
            Some(c) => self.write(c),
            None => Ok(false),
        };
        self.checkpoints.running.store(false, Ordering::Release);
        result
    }

    /// Disk mode: starts a checkpoint of index `applied` on a thread of its
    /// own. False if none could start now: one is being written, a reader
    /// holds an older version, or the last one failed less than a second
    /// ago. [`Checkpoints::durable`] says when it is done.
    pub(crate) fn start_checkpoint(self: &Arc<Self>, applied: u64) -> io::Result<bool> {
        // Called at every apply while one is due: the atomic first, the
        // lock only when none runs.
        if self.disk.is_none()
            || self.checkpoints.running.load(Ordering::Acquire)
            || self.checkpoints.backing_off()
            || self.checkpoints.running.swap(true, Ordering::Acquire)
        {
            return Ok(false);
        }
        let Some(capture) = self.capture(applied) else {
            self.checkpoints.running.store(false, Ordering::Release);
            return Ok(false);
        };
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let applied = capture.applied;
                match shared.write(capture) {
                    Ok(true) => {}
                    Ok(false) => shared
                        .checkpoints
                        .set_failed("a snapshot was installed while it was written".into()),
                    Err(e) => {
                        warn!(applied, "checkpoint failed, will retry: {e}");
                        shared.checkpoints.set_failed(e.to_string());
                    }
                }
                shared.checkpoints.running.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.checkpoints.running.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }
}

/// After `v` was written into `file`: the current version of `db` reads
/// from the file every page it still shares with `v`.
fn rebase(db: &Db, v: &Version, file: Arc<BaseFile>) {
    let without = |cur: &Version| {
        let mut data = cur.data.clone();
        for (pgno, page) in &v.data {
            if data.get(pgno).is_some_and(|p| Arc::ptr_eq(p, page)) {
                data.remove(pgno);
            }
        }
        data
    };
    // Most of the work outside the lock; again under it if an apply came
    // in between.
    let cur = db.current();
    if cur.page_size != v.page_size {
        // A new page size since: every page is in memory, none in the file.
        return;
    }
    let mut data: OrdMap<u32, Arc<[u8]>> = without(&cur);
    let mut st = db.lock();
    if !Arc::ptr_eq(&st.current, &cur) {
        if st.current.page_size != v.page_size {
            return;
        }
        data = without(&st.current);
    }
    let next = Version {
        seq: st.current.seq,
        id: st.current.id,
        page_size: st.current.page_size,
        pages: st.current.pages,
        data,
        base: Some(file),
    };
    // A reader of the replaced version reads its own pages first, so the
    // file is right for it now, but not after the next checkpoint.
    let old = std::mem::replace(&mut st.current, Arc::new(next));
    st.track(&old);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use crate::Store;

    fn rows(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Commits go on while a checkpoint is written; once it is durable the
    /// current version reads from the file what it wrote, and a reopen
    /// finds the record of its index.
    #[test]
    fn commits_go_on_while_a_checkpoint_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::disk(tmp.path()).unwrap();
        let shared = &store.shared;
        let conn = store.open("c.db").unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        for _ in 0..50 {
            conn.execute("INSERT INTO t (v) VALUES (randomblob(1000))", [])
                .unwrap();
        }
        let gate = shared.checkpoints.exclude();
        assert!(shared.start_checkpoint(7).unwrap());
        // One at a time.
        assert!(!shared.start_checkpoint(7).unwrap());
        for _ in 0..50 {
            conn.execute("INSERT INTO t (v) VALUES (randomblob(1000))", [])
                .unwrap();
        }
        assert_eq!(rows(&conn), 100);
        assert_eq!(shared.checkpoints.durable.load(Ordering::Relaxed), 0);
        let in_memory = shared.db("c.db").current().data.len();
        drop(gate);
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.checkpoints.durable.load(Ordering::Relaxed) < 7 {
            assert!(Instant::now() < deadline, "never durable");
            std::thread::sleep(Duration::from_millis(5));
        }
        let current = shared.db("c.db").current();
        assert!(current.base.is_some());
        assert!(
            current.data.len() < in_memory,
            "{} pages still in memory of {in_memory}",
            current.data.len()
        );
        assert_eq!(rows(&conn), 100);
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        drop(conn);
        drop(store);
        let reopened = Store::disk(tmp.path()).unwrap();
        assert_eq!(reopened.shared.opened_at, 7);
        assert_eq!(rows(&reopened.open("c.db").unwrap()), 50);
    }
}
