//! The persistence thread: appends entries and hard state handed out by the
//! core, with one fsync for everything queued meanwhile (group commit), and
//! reports the highest durable ready number back.
//!
//! An I/O error never drops a write and never acknowledges one: the thread
//! keeps the batches, reports the error, backs off, and rewrites them
//! (appending at an index already written overwrites from there), so the
//! node stops acknowledging while the disk is failing and resumes by itself.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, info};

use crate::core::PersistBatch;
use crate::storage::{Log, MetaFile, MetaState, StorageError};

/// Work for the persistence thread.
#[derive(Debug)]
pub enum Job {
    /// Append and make durable.
    Batch(PersistBatch),
    /// Remove log segments at or below this index.
    Compact(u64),
    /// Finish queued work and exit.
    Stop,
}

/// What the thread reports.
#[derive(Debug)]
pub enum Report {
    /// Durable up to this ready number.
    Persisted(u64),
    /// Writing failed (the batches are retried); `None` once it recovered.
    Error(Option<String>),
    /// The thread exited.
    Stopped,
}

/// Owns the on-disk log and hard state.
pub struct Persister {
    /// The node id written into the meta file.
    pub id: u64,
    /// The log.
    pub log: Log,
    /// The hard-state file.
    pub meta: MetaFile,
    /// Upper bound on jobs taken per fsync.
    pub max_batch: usize,
    /// Set when the node stops: give up retrying a failing disk.
    pub shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The meta file was written but its fsync has not succeeded yet.
    meta_unsynced: bool,
}

/// Counters for benchmarks: entries written and fsyncs issued.
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries appended.
    pub entries: std::sync::atomic::AtomicU64,
    /// Log fsyncs.
    pub syncs: std::sync::atomic::AtomicU64,
}

impl Persister {
    /// A persister for node `id` over an opened log and meta file.
    pub fn new(id: u64, log: Log, meta: MetaFile) -> Self {
        Persister {
            id,
            log,
            meta,
            max_batch: 1024,
            shutdown: Default::default(),
            meta_unsynced: false,
        }
    }

    /// Writes batches and makes them durable (one log fsync at most). The
    /// thread's body; public so a simulator can persist synchronously.
    pub fn write(&mut self, batches: &[PersistBatch], stats: &Stats) -> Result<(), StorageError> {
        let mut meta_dirty = self.meta_unsynced;
        let mut log_dirty = false;
        for b in batches {
            if let Some(index) = b.snapshot_index {
                self.log.reset(index)?;
                let st = self.meta.state();
                self.meta
                    .write(MetaState {
                        commit: st.commit.max(index),
                        ..st
                    })
                    .map_err(|e| StorageError::io(std::path::Path::new("raft/meta"), e))?;
                meta_dirty = true;
            }
            if !b.entries.is_empty() {
                self.log.append(&b.entries)?;
                log_dirty = true;
                stats
                    .entries
                    .fetch_add(b.entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(hs) = &b.hard_state {
                let st = self.meta.state();
                // Commit alone needs no fsync of its own (raft relearns it);
                // it rides along whenever term or vote change.
                if hs.term != st.term || hs.vote != st.vote {
                    self.meta
                        .write(MetaState {
                            id: self.id,
                            term: hs.term,
                            vote: hs.vote,
                            commit: hs.commit,
                        })
                        .map_err(|e| StorageError::io(std::path::Path::new("raft/meta"), e))?;
                    meta_dirty = true;
                }
            }
        }
        if log_dirty {
            self.log.sync()?;
            stats
                .syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if meta_dirty {
            // Remembered across a failed sync: the retry must sync again
            // even though the value in the file already matches.
            self.meta_unsynced = true;
            self.meta
                .sync()
                .map_err(|e| StorageError::io(std::path::Path::new("raft/meta"), e))?;
            self.meta_unsynced = false;
        }
        Ok(())
    }

    /// Runs until [`Job::Stop`] or the job channel closes.
    pub fn run(
        mut self,
        jobs: Receiver<Job>,
        reports: Sender<Report>,
        stats: std::sync::Arc<Stats>,
    ) {
        let mut stop = false;
        while !stop {
            let Ok(first) = jobs.recv() else { break };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let mut writes = Vec::new();
            let mut compact = None;
            for job in batch {
                match job {
                    Job::Batch(b) => writes.push(b),
                    Job::Compact(i) => compact = Some(i),
                    Job::Stop => stop = true,
                }
            }
            let mut backoff = Duration::from_millis(10);
            let mut failing = false;
            // Retry until it works or we are told to stop; bounded by stop.
            loop {
                match self.write(&writes, &stats) {
                    Ok(()) => break,
                    Err(e) => {
                        error!(error = %e, "persisting the log failed; retrying");
                        failing = true;
                        let _ = reports.send(Report::Error(Some(e.to_string())));
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        if self.shutdown.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = reports.send(Report::Stopped);
                            return;
                        }
                    }
                }
            }
            if failing {
                info!("persisting the log recovered");
                let _ = reports.send(Report::Error(None));
            }
            if let Some(n) = writes.iter().map(|b| b.number).max() {
                let _ = reports.send(Report::Persisted(n));
            }
            if let Some(i) = compact {
                if let Err(e) = self.log.compact(i) {
                    error!(error = %e, "log compaction failed");
                }
            }
        }
        let _ = reports.send(Report::Stopped);
    }
}
