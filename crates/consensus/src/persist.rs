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
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    Error(Option<DiskFault>),
    /// The thread exited.
    Stopped,
}

/// Why the log cannot be persisted right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFault {
    /// The error, with the file it concerns.
    pub message: String,
    /// The disk is full: writes are refused as "disk full", not as a
    /// generic storage failure.
    pub full: bool,
}

/// What staging a batch wrote (and so what needs an fsync).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    /// The log was written.
    pub log: bool,
    /// The meta file was written.
    pub meta: bool,
}

fn meta_err(e: std::io::Error) -> StorageError {
    StorageError::io(std::path::Path::new("raft/meta"), e)
}

/// Writes one batch without syncing: the persistence rules in one place,
/// shared by the persistence thread and the simulator.
///
/// - a snapshot batch resets the log after the snapshot (commit ≥ its index);
/// - entries are appended (a conflicting suffix is replaced);
/// - the meta file is rewritten when term or vote change, or when the batch
///   asks for its commit index to be durable (a membership change), and
///   then carries the newest commit index.
pub fn stage_batch(
    log: &mut Log,
    meta: &mut MetaFile,
    id: u64,
    b: &PersistBatch,
) -> Result<Staged, StorageError> {
    let mut staged = Staged::default();
    if let Some(index) = b.snapshot_index {
        log.reset(index)?;
        let st = meta.state();
        meta.write(MetaState {
            commit: st.commit.max(index),
            ..st
        })
        .map_err(meta_err)?;
        staged.meta = true;
    }
    if !b.entries.is_empty() {
        log.append(&b.entries)?;
        staged.log = true;
    }
    let st = meta.state();
    let (term, vote, hs_commit) = b
        .hard_state
        .as_ref()
        .map_or((st.term, st.vote, st.commit), |hs| {
            (hs.term, hs.vote, hs.commit)
        });
    let commit = b.commit.unwrap_or(0).max(st.commit);
    let wants_commit = b.commit.is_some_and(|c| c > st.commit);
    if term != st.term || vote != st.vote || wants_commit {
        // A commit index alone needs no fsync of its own (raft relearns
        // it), except for membership changes; it rides along otherwise.
        meta.write(MetaState {
            id,
            term,
            vote,
            commit: commit.max(hs_commit.min(log.last_index())),
        })
        .map_err(meta_err)?;
        staged.meta = true;
    }
    Ok(staged)
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

/// What the node's log writer and snapshots did: plain counters for
/// benchmarks, and histograms the node exports as Prometheus metrics.
/// Shared by the service, its driver and the log writer thread.
#[derive(Debug)]
pub struct Stats {
    /// Entries appended.
    pub entries: std::sync::atomic::AtomicU64,
    /// Log fsyncs.
    pub syncs: std::sync::atomic::AtomicU64,
    /// How long each log fsync took, in seconds.
    pub fsync_seconds: Histogram,
    /// Entries made durable by each log fsync (group commit).
    pub entries_per_fsync: Histogram,
    /// Snapshots taken here and installed from a leader.
    pub snapshots: Family<SnapshotKind, Counter>,
    /// How long taking or installing a snapshot took, in seconds.
    pub snapshot_seconds: Family<SnapshotKind, Histogram, fn() -> Histogram>,
    /// ReadIndex rounds this node started (each a heartbeat to every peer).
    pub read_rounds: Counter,
    /// Read barriers the leader answered under its lease, without a round.
    pub lease_reads: Counter,
}

/// Label of the snapshot metrics: `kind` is `taken` or `installed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SnapshotKind {
    /// `taken` or `installed`.
    pub kind: &'static str,
}

impl SnapshotKind {
    /// A snapshot this node wrote.
    pub const TAKEN: SnapshotKind = SnapshotKind { kind: "taken" };
    /// A snapshot received from the leader and installed.
    pub const INSTALLED: SnapshotKind = SnapshotKind { kind: "installed" };
}

/// 50 µs to about 3.3 s: an fsync ranges from a preallocated segment on
/// a fast disk to a slow, busy one.
fn fsync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 17))
}

/// 1 ms to about 65 s.
fn snapshot_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-3, 2.0, 17))
}

impl Default for Stats {
    fn default() -> Self {
        let stats = Stats {
            entries: Default::default(),
            syncs: Default::default(),
            fsync_seconds: fsync_histogram(),
            // 1 to 1024 entries: the log writer takes at most `max_batch`.
            entries_per_fsync: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            snapshots: Family::default(),
            snapshot_seconds: Family::new_with_constructor(snapshot_histogram),
            read_rounds: Counter::default(),
            lease_reads: Counter::default(),
        };
        // Both kinds show (at zero) before the first snapshot.
        for kind in [SnapshotKind::TAKEN, SnapshotKind::INSTALLED] {
            let _ = stats.snapshots.get_or_create(&kind);
            let _ = stats.snapshot_seconds.get_or_create(&kind);
        }
        stats
    }
}

impl Stats {
    /// Records a snapshot of `kind` that took `elapsed`.
    pub fn snapshot(&self, kind: &SnapshotKind, elapsed: Duration) {
        self.snapshots.get_or_create(kind).inc();
        self.snapshot_seconds
            .get_or_create(kind)
            .observe(elapsed.as_secs_f64());
    }
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
        let mut staged = Staged {
            meta: self.meta_unsynced,
            ..Staged::default()
        };
        let mut entries = 0;
        for b in batches {
            let s = stage_batch(&mut self.log, &mut self.meta, self.id, b)?;
            staged.log |= s.log;
            staged.meta |= s.meta;
            entries += b.entries.len() as u64;
        }
        stats
            .entries
            .fetch_add(entries, std::sync::atomic::Ordering::Relaxed);
        if staged.log {
            let started = std::time::Instant::now();
            self.log.sync()?;
            stats.fsync_seconds.observe(started.elapsed().as_secs_f64());
            stats.entries_per_fsync.observe(entries as f64);
            stats
                .syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if staged.meta {
            // Remembered across a failed sync: the retry must sync again
            // even though the value in the file already matches.
            self.meta_unsynced = true;
            self.meta.sync().map_err(meta_err)?;
            self.meta_unsynced = false;
        }
        Ok(())
    }

    /// Runs until [`Job::Stop`] or the job channel closes. The persister
    /// is shared with the driver, which writes a batch itself when it is
    /// the only voter and nothing is queued here ([`crate::driver`]).
    pub fn run(
        this: &std::sync::Mutex<Persister>,
        jobs: Receiver<Job>,
        reports: Sender<Report>,
        stats: std::sync::Arc<Stats>,
    ) {
        let lock = || this.lock().unwrap_or_else(|e| e.into_inner());
        let (max_batch, shutdown) = {
            let p = lock();
            (p.max_batch, p.shutdown.clone())
        };
        let mut stop = false;
        while !stop {
            let Ok(first) = jobs.recv() else { break };
            let mut batch = vec![first];
            while batch.len() < max_batch {
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
                // Locked per attempt, not across the back-off.
                let written = lock().write(&writes, &stats);
                match written {
                    Ok(()) => break,
                    Err(e) => {
                        let full = e.is_disk_full();
                        if full {
                            error!(
                                error = %e,
                                "the disk is full: writes are refused until space is freed; \
                                 persisting the log is retried"
                            );
                        } else {
                            error!(error = %e, "persisting the log failed; retrying");
                        }
                        failing = true;
                        let _ = reports.send(Report::Error(Some(DiskFault {
                            message: e.to_string(),
                            full,
                        })));
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        if shutdown.load(std::sync::atomic::Ordering::Relaxed) {
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
                if let Err(e) = lock().log.compact(i) {
                    error!(error = %e, "log compaction failed");
                }
            }
        }
        let _ = reports.send(Report::Stopped);
    }
}
