//! The in-memory view of the log that raft-rs reads through its `Storage`
//! trait. It holds the entries after the last compaction point; the on-disk
//! [`super::Log`] is the durable copy, written by the persistence thread.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};

/// Entries, hard state and snapshot metadata, as raft-rs sees them.
#[derive(Debug, Default)]
pub struct RaftLogView {
    hard_state: HardState,
    snapshot: SnapshotMetadata,
    /// Index and term of the entry just before `entries[0]`.
    offset_index: u64,
    offset_term: u64,
    entries: VecDeque<Entry>,
    /// Set when raft asked for a snapshot that must include a peer the
    /// latest one does not know (a joiner); the core then takes one.
    snapshot_wanted: std::cell::Cell<bool>,
}

impl RaftLogView {
    /// A view starting from a snapshot (or nothing: index 0) and the entries
    /// that follow it.
    pub fn new(hard_state: HardState, snapshot: SnapshotMetadata, entries: Vec<Entry>) -> Self {
        RaftLogView {
            hard_state,
            offset_index: snapshot.index,
            offset_term: snapshot.term,
            snapshot,
            entries: entries.into(),
            snapshot_wanted: std::cell::Cell::new(false),
        }
    }

    /// Appends entries, replacing any conflicting suffix.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        if first.index <= self.offset_index {
            // Raft never sends entries below the snapshot; ignore defensively.
            return;
        }
        let keep = (first.index - self.offset_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
    }

    /// Replaces everything with a snapshot.
    pub fn apply_snapshot(&mut self, meta: SnapshotMetadata) {
        self.offset_index = meta.index;
        self.offset_term = meta.term;
        self.entries.clear();
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
        while let Some(e) = self.entries.front() {
            if e.index > index {
                break;
            }
            self.offset_index = e.index;
            self.offset_term = e.term;
            self.entries.pop_front();
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
        self.offset_index + self.entries.len() as u64
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.offset_index {
            return None;
        }
        self.entries.get((index - self.offset_index - 1) as usize)
    }

    /// The number of entries held in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entries are held in memory.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
        _context: GetEntriesContext,
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
        for i in low..high {
            let Some(e) = self.entry(i) else { break };
            let sz = protobuf::Message::compute_size(e) as u64;
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
        match self.entry(idx) {
            Some(e) => Ok(e.term),
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
