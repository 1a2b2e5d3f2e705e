//! The in-memory view of the log that raft-rs reads through its `Storage`
//! trait. It holds the entries after the last compaction point; the on-disk
//! [`super::Log`] is the durable copy, written by the persistence thread.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use tracing::warn;

use super::log::LogReader;

/// Entries, hard state and snapshot metadata, as raft-rs sees them.
///
/// The terms of all entries after the compaction point are always in memory
/// (so `term()` is cheap); the entries themselves only for a suffix of the
/// log. Entries that are applied (hence durable and committed) are evicted
/// from the front of that suffix while it holds more than `cache_budget`
/// bytes, once a [`LogReader`] is attached; [`Storage::entries`] reads them
/// back from the segment files when a lagging follower needs them. After a
/// restart the suffix may also start above entries that are committed but
/// not yet applied (their payloads stayed on disk at load, see
/// [`RaftLogView::with_dropped`]); they are read back the same way when
/// raft-rs applies them.
#[derive(Debug)]
pub struct RaftLogView {
    hard_state: HardState,
    snapshot: SnapshotMetadata,
    /// Index and term of the entry just before `terms[0]`.
    offset_index: u64,
    offset_term: u64,
    /// Terms of the entries `offset_index + 1 ..= last_index`.
    terms: VecDeque<u64>,
    /// The last `entries.len()` entries of the log (a suffix of `terms`).
    entries: VecDeque<Entry>,
    /// Encoded size of `entries`.
    cached_bytes: u64,
    /// Evict applied entries while `cached_bytes` exceeds this.
    cache_budget: u64,
    /// Where evicted entries are read back from (no eviction without one).
    reader: Option<LogReader>,
    /// Set when raft asked for a snapshot that must include a peer the
    /// latest one does not know (a joiner); the core then takes one.
    snapshot_wanted: std::cell::Cell<bool>,
    /// Set when entries that raft needed to apply (or to decide on) could
    /// not be read back; the core then stops with this error.
    read_failure: std::cell::RefCell<Option<String>>,
}

impl Default for RaftLogView {
    fn default() -> Self {
        RaftLogView::new(
            HardState::default(),
            SnapshotMetadata::default(),
            Vec::new(),
        )
    }
}

/// Bytes of entry payloads a node keeps in memory by default: the cache of
/// the view ([`crate::CoreConfig::log_cache_bytes`]) and what loading the log
/// at start keeps ([`crate::boot::open`]).
pub const DEFAULT_LOG_CACHE_BYTES: u64 = 64 << 20;

fn entry_size(e: &Entry) -> u64 {
    u64::from(protobuf::Message::compute_size(e))
}

impl RaftLogView {
    /// A view starting from a snapshot (or nothing: index 0) and the entries
    /// that follow it.
    pub fn new(hard_state: HardState, snapshot: SnapshotMetadata, entries: Vec<Entry>) -> Self {
        Self::with_dropped(hard_state, snapshot, Vec::new(), entries)
    }

    /// Like [`RaftLogView::new`] where only the terms of the first entries
    /// after the snapshot are known (`dropped_terms`: their payloads stayed on
    /// disk at load, see [`super::Log::open_bounded`]) and `entries` follow.
    /// A reader must be attached ([`RaftLogView::set_cache`]) to serve them.
    pub fn with_dropped(
        hard_state: HardState,
        snapshot: SnapshotMetadata,
        dropped_terms: Vec<u64>,
        entries: Vec<Entry>,
    ) -> Self {
        let cached_bytes = entries.iter().map(entry_size).sum();
        let mut terms: VecDeque<u64> = dropped_terms.into();
        terms.extend(entries.iter().map(|e| e.term));
        RaftLogView {
            hard_state,
            offset_index: snapshot.index,
            offset_term: snapshot.term,
            snapshot,
            terms,
            entries: entries.into(),
            cached_bytes,
            cache_budget: u64::MAX,
            reader: None,
            snapshot_wanted: std::cell::Cell::new(false),
            read_failure: std::cell::RefCell::new(None),
        }
    }

    /// Lets applied entries beyond `budget` bytes leave memory; they are read
    /// back through `reader` when needed.
    pub fn set_cache(&mut self, reader: LogReader, budget: u64) {
        self.reader = Some(reader);
        self.cache_budget = budget;
    }

    /// Index of the first entry held in memory (`last_index + 1` if none).
    fn cache_first(&self) -> u64 {
        self.last_index() + 1 - self.entries.len() as u64
    }

    /// Appends entries, replacing any conflicting suffix.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        if first.index <= self.offset_index {
            // Raft never sends entries below the snapshot; ignore defensively.
            return;
        }
        if first.index > self.last_index() + 1 {
            // A gap: raft never does this; ignore defensively.
            return;
        }
        // Before `terms` shrinks: `cache_first` depends on the last index.
        let keep_cached = first.index.saturating_sub(self.cache_first()) as usize;
        let keep = (first.index - self.offset_index - 1) as usize;
        self.terms.truncate(keep);
        while self.entries.len() > keep_cached {
            if let Some(e) = self.entries.pop_back() {
                self.cached_bytes -= entry_size(&e);
            }
        }
        for e in entries {
            self.terms.push_back(e.term);
            self.cached_bytes += entry_size(e);
            self.entries.push_back(e.clone());
        }
    }

    /// Drops entries at or below `applied` from memory while more than the
    /// budget is held (only with a reader to get them back).
    pub fn evict(&mut self, applied: u64) {
        if self.reader.is_none() {
            return;
        }
        while self.cached_bytes > self.cache_budget {
            match self.entries.front() {
                Some(e) if e.index <= applied => {}
                _ => break,
            }
            if let Some(e) = self.entries.pop_front() {
                self.cached_bytes -= entry_size(&e);
            }
        }
    }

    /// Replaces everything with a snapshot.
    pub fn apply_snapshot(&mut self, meta: SnapshotMetadata) {
        self.offset_index = meta.index;
        self.offset_term = meta.term;
        self.terms.clear();
        self.entries.clear();
        self.cached_bytes = 0;
        if self.hard_state.commit < meta.index {
            self.hard_state.commit = meta.index;
        }
        self.snapshot = meta;
    }

    /// Records a newer local snapshot (the log is unchanged).
    pub fn set_snapshot(&mut self, meta: SnapshotMetadata) {
        self.snapshot = meta;
    }

    /// Drops entries up to and including `index` (never past the snapshot).
    pub fn compact(&mut self, index: u64) {
        let index = index.min(self.snapshot.index).min(self.last_index());
        while self.offset_index < index {
            let Some(term) = self.terms.pop_front() else {
                break;
            };
            self.offset_index += 1;
            self.offset_term = term;
        }
        while let Some(e) = self.entries.front() {
            if e.index > self.offset_index {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.cached_bytes -= entry_size(&e);
            }
        }
    }

    /// Whether raft asked for a newer snapshot (and clears the request).
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Sets the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Metadata of the latest snapshot.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    /// The index of the first entry held.
    pub fn first_index(&self) -> u64 {
        self.offset_index + 1
    }

    /// The index of the last entry held.
    pub fn last_index(&self) -> u64 {
        self.offset_index + self.terms.len() as u64
    }

    /// The entry at `index`, if held in memory.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let first = self.cache_first();
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    /// The term of the entry at `index` (after the compaction point).
    fn term_of(&self, index: u64) -> Option<u64> {
        if index <= self.offset_index {
            return None;
        }
        self.terms
            .get((index - self.offset_index - 1) as usize)
            .copied()
    }

    /// The number of entries after the compaction point.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether no entries follow the compaction point.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The number of entries held in memory, and their encoded size.
    pub fn cached(&self) -> (usize, u64) {
        (self.entries.len(), self.cached_bytes)
    }

    /// Takes the error of a failed read-back that raft could not be answered
    /// `Compacted` for (see [`Storage::entries`]).
    pub fn take_read_failure(&self) -> Option<String> {
        self.read_failure.borrow_mut().take()
    }

    /// Entries `low..high` read back from the segment files, checked against
    /// the terms held in memory.
    fn read_back(&self, low: u64, high: u64, max: u64) -> Result<Vec<Entry>, String> {
        let Some(reader) = self.reader.as_ref() else {
            return Err(format!("entries {low}..{high} are not in memory"));
        };
        match reader.read(low, high, max) {
            Ok(out) => {
                for (i, e) in out.iter().enumerate() {
                    if e.index != low + i as u64 || self.term_of(e.index) != Some(e.term) {
                        warn!(
                            index = e.index,
                            "entry read back from the log does not match"
                        );
                        return Err(format!(
                            "entry {} read back from the log does not match",
                            e.index
                        ));
                    }
                }
                Ok(out)
            }
            Err(e) => {
                warn!(error = %e, low, high, "reading evicted entries back failed");
                Err(format!("reading entries {low}..{high} back failed: {e}"))
            }
        }
    }
}

impl Storage for RaftLogView {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let conf_state: ConfState = self.snapshot.get_conf_state().clone();
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state,
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.offset_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        let cache_first = self.cache_first();
        if low < cache_first {
            // Entries not in memory (evicted once applied, or left on disk
            // at load: durable and committed either way) come from the
            // segment files. A failed or inconsistent read is never data.
            // raft-rs panics on `Unavailable`, so for a follower's appends
            // (`can_async`) it answers `Compacted`: the leader then sends a
            // snapshot instead. raft-rs also panics on any error when it
            // collects committed entries to apply (and a few other
            // synchronous reads), so there the answer is short (what could
            // be read, maybe nothing: raft-rs accepts short answers) and the
            // failure is recorded; the core stops with it before using the
            // Ready ([`RaftLogView::take_read_failure`]).
            let upto = high.min(cache_first);
            let read = match self.read_back(low, upto, max) {
                Ok(read) => read,
                Err(_) if context.can_async() => {
                    return Err(raft::Error::Store(RaftStorageError::Compacted));
                }
                Err(why) => {
                    self.read_failure.borrow_mut().get_or_insert(why);
                    return Ok(Vec::new());
                }
            };
            size = read.iter().map(entry_size).sum();
            let complete = read.len() as u64 == upto - low;
            out = read;
            if !complete || upto == high {
                return Ok(out);
            }
        }
        for i in low.max(cache_first)..high {
            let Some(e) = self.entry(i) else { break };
            let sz = entry_size(e);
            if !out.is_empty() && size + sz > max {
                break;
            }
            size += sz;
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.offset_index {
            return Ok(self.offset_term);
        }
        if idx < self.offset_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        match self.term_of(idx) {
            Some(t) => Ok(t),
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(RaftLogView::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLogView::last_index(self))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let cs = self.snapshot.get_conf_state();
        // raft-rs refuses a snapshot whose configuration lacks the receiver.
        let knows_peer = cs.voters.contains(&to) || cs.learners.contains(&to);
        if self.snapshot.index == 0 || self.snapshot.index < request_index || !knows_peer {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        // The data travels out of band (streamed from the snapshot file by
        // the transport); the message only carries the metadata.
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::storage::log::log_dir;
    use crate::storage::segment;
    use crate::storage::{Disk, Log, LogOptions, RealDisk};

    fn entry(index: u64, term: u64, size: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![(index * 7) as u8; size].into(),
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    /// A log of `n` entries on disk (small segments, so several files) and
    /// a view holding the same entries.
    fn setup(dir: &Path, n: u64) -> (Vec<Entry>, RaftLogView) {
        let opts = LogOptions {
            segment_size: 4096,
            auto_recovery: false,
        };
        let (mut log, _) = Log::open(Arc::new(RealDisk), dir, opts, 0).unwrap();
        let all: Vec<Entry> = (1..=n).map(|i| entry(i, 1 + i / 20, 300)).collect();
        log.append(&all).unwrap();
        log.sync().unwrap();
        let view = RaftLogView::new(
            HardState::default(),
            SnapshotMetadata::default(),
            all.clone(),
        );
        (all, view)
    }

    #[test]
    fn evicted_entries_are_read_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let (all, mut view) = setup(dir.path(), 60);
        let reference = RaftLogView::new(
            HardState::default(),
            SnapshotMetadata::default(),
            all.clone(),
        );
        view.set_cache(LogReader::new(Arc::new(RealDisk), dir.path()), 3000);
        view.evict(60);
        let (held, bytes) = view.cached();
        assert!(
            held < 60 && bytes <= 3000,
            "evicted: {held} entries, {bytes} bytes"
        );
        assert!(view.entry(1).is_none());
        // Terms stay in memory for every index.
        for e in &all {
            assert_eq!(view.term(e.index).unwrap(), e.term);
        }
        assert_eq!(view.entries(1, 61, None, ctx()).unwrap(), all);
        // Size limits and ranges give what the all-in-memory view gives,
        // including ranges spanning disk and memory.
        for (low, high, max) in [
            (1, 61, 1000),
            (5, 55, 1),
            (17, 61, 5000),
            (40, 61, 2000),
            (58, 60, 0),
        ] {
            assert_eq!(
                view.entries(low, high, max, ctx()).unwrap(),
                reference.entries(low, high, max, ctx()).unwrap(),
                "{low}..{high} max {max}"
            );
        }
        // Compaction below the cache still works; the reader serves the rest.
        view.set_snapshot(SnapshotMetadata {
            index: 30,
            term: all[29].term,
            ..Default::default()
        });
        view.compact(25);
        assert_eq!(view.first_index(), 26);
        assert_eq!(view.term(25).unwrap(), all[24].term);
        assert!(view.entries(20, 30, None, ctx()).is_err());
        assert_eq!(
            view.entries(26, 61, None, ctx()).unwrap(),
            all[25..].to_vec()
        );
    }

    #[test]
    fn budget_is_respected_and_unapplied_entries_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (all, mut view) = setup(dir.path(), 60);
        // Without a reader nothing is evicted.
        view.evict(60);
        assert_eq!(view.cached().0, 60);
        view.set_cache(LogReader::new(Arc::new(RealDisk), dir.path()), 0);
        view.evict(10);
        assert_eq!(view.cached().0, 50, "entries after the applied index stay");
        assert_eq!(view.entry(11), Some(&all[10]));
        view.evict(60);
        assert_eq!(view.cached(), (0, 0));
        // New entries, including a conflicting suffix, go to memory.
        view.append(&[entry(61, 9, 10), entry(62, 9, 10)]);
        view.append(&[entry(62, 10, 10)]);
        assert_eq!(view.last_index(), 62);
        assert_eq!(view.term(62).unwrap(), 10);
        assert_eq!(view.cached().0, 2);
        let got = view.entries(59, 63, None, ctx()).unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(59, all[58].term), (60, all[59].term), (61, 9), (62, 10)]
        );
        // Byte budget: appending while applying keeps memory at the budget.
        view.set_cache(LogReader::new(Arc::new(RealDisk), dir.path()), 1000);
        view.evict(62);
        assert!(view.cached().1 <= 1000);
    }

    #[test]
    fn a_corrupt_record_read_back_is_an_error_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let (all, mut view) = setup(dir.path(), 60);
        let reader = LogReader::new(Arc::new(RealDisk), dir.path());
        view.set_cache(reader.clone(), 0);
        view.evict(60);
        assert_eq!(view.entries(1, 61, None, ctx()).unwrap(), all);
        // Damage the payload of the first record of the second closed segment.
        let ldir = log_dir(dir.path());
        let mut closed: Vec<_> = RealDisk
            .list(&ldir)
            .unwrap()
            .into_iter()
            .filter_map(|n| segment::parse_closed_name(&n).map(|(f, l)| (f, l, n)))
            .collect();
        closed.sort();
        let (first, last, name) = closed[1].clone();
        let path = ldir.join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (segment::HEADER_SIZE + segment::FRAME_SIZE + 20) as usize;
        bytes[at] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            reader.read(first, last + 1, u64::MAX),
            Err(crate::storage::StorageError::Corrupt { .. })
        ));
        // raft-rs panics on `Unavailable`: for a follower's appends the view
        // answers `Compacted` (the leader sends a snapshot instead).
        let send = || GetEntriesContext::empty(true);
        assert_eq!(
            view.entries(first, last + 1, None, send()),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        );
        assert!(view.entries(1, 61, None, send()).is_err());
        assert_eq!(view.take_read_failure(), None);
        // Where raft-rs panics on any error (applying committed entries), the
        // answer is short and the failure is recorded for the core.
        assert_eq!(view.entries(first, last + 1, None, ctx()), Ok(Vec::new()));
        assert!(view.take_read_failure().is_some());
        assert_eq!(view.take_read_failure(), None);
        // Entries before the damage are still served.
        assert_eq!(
            view.entries(1, first, None, ctx()).unwrap(),
            all[..first as usize - 1].to_vec()
        );
        // A missing segment is an error too.
        std::fs::remove_file(&path).unwrap();
        assert!(view.entries(first, first + 1, None, send()).is_err());
        assert!(view
            .entries(first, first + 1, None, ctx())
            .unwrap()
            .is_empty());
        assert!(view.take_read_failure().is_some());
    }

    #[test]
    fn reopening_a_long_log_keeps_a_bounded_tail_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (all, _) = setup(dir.path(), 200);
        let total: u64 = all.iter().map(entry_size).sum();
        let budget = 5000;
        assert!(total > 10 * budget);
        let opts = LogOptions {
            segment_size: 4096,
            auto_recovery: false,
        };
        // Everything committed: only about `budget` bytes of payload stay.
        let (log, report) =
            Log::open_bounded(Arc::new(RealDisk), dir.path(), opts, 0, budget, 200).unwrap();
        assert_eq!(log.last_index(), 200);
        let kept: u64 = report.entries.iter().map(entry_size).sum();
        assert!(kept <= budget, "{kept} bytes kept");
        assert!(!report.entries.is_empty());
        assert_eq!(report.dropped_terms.len() + report.entries.len(), 200);
        assert_eq!(report.entries.last(), all.last());
        let dropped = report.dropped_terms.len();
        assert_eq!(
            report.dropped_terms,
            all[..dropped].iter().map(|e| e.term).collect::<Vec<_>>()
        );
        drop(log);
        let mut view = RaftLogView::with_dropped(
            HardState::default(),
            SnapshotMetadata::default(),
            report.dropped_terms,
            report.entries,
        );
        view.set_cache(LogReader::new(Arc::new(RealDisk), dir.path()), budget);
        assert_eq!(view.last_index(), 200);
        assert!(view.cached().1 <= budget);
        for e in &all {
            assert_eq!(view.term(e.index).unwrap(), e.term);
        }
        // Every entry reads back identically, in one go and in pieces.
        assert_eq!(view.entries(1, 201, None, ctx()).unwrap(), all);
        let mut next = 1;
        while next <= 200 {
            let got = view.entries(next, 201, 2000, ctx()).unwrap();
            assert!(!got.is_empty());
            for e in &got {
                assert_eq!(e, &all[e.index as usize - 1]);
            }
            next += got.len() as u64;
        }
        assert_eq!(view.take_read_failure(), None);

        // Entries after the durable commit index always stay in memory.
        let (_log, report) =
            Log::open_bounded(Arc::new(RealDisk), dir.path(), opts, 0, budget, 150).unwrap();
        assert_eq!(report.dropped_terms.len(), 150);
        assert_eq!(report.entries, all[150..].to_vec());
        // After a snapshot, only entries after it are counted.
        let (_log, report) =
            Log::open_bounded(Arc::new(RealDisk), dir.path(), opts, 120, budget, 200).unwrap();
        assert_eq!(report.dropped_terms.len() + report.entries.len(), 80);
        assert_eq!(report.entries.last(), all.last());
        // Without a budget, everything.
        let (_log, report) = Log::open(Arc::new(RealDisk), dir.path(), opts, 0).unwrap();
        assert!(report.dropped_terms.is_empty());
        assert_eq!(report.entries, all);
    }
}
