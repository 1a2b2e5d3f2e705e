//! Snapshots received from a leader are rebuilt off the driver thread: the
//! HTTP handler that received the file has the State's [`Prepare`] build
//! what a restore would build (in disk mode, the next generation of
//! database files), then hands raft the message; when raft installs the
//! snapshot, the core swaps the prepared state in ([`crate::State::install`],
//! O(databases)) instead of reading the file on the driver thread. Ticks,
//! heartbeats and appends go on meanwhile.

use std::any::Any;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};

/// A state rebuilt from a snapshot, waiting to be installed. Only the State
/// that prepared it knows its type.
pub type Prepared = Box<dyn Any + Send>;

/// Rebuilds a State from a snapshot image on any thread.
pub trait Prepare: Send + Sync + 'static {
    /// Reads the image of the snapshot at `index` and builds the state it
    /// holds, without touching the live state.
    fn prepare(&self, index: u64, input: &mut dyn Read) -> io::Result<Prepared>;
}

/// The one snapshot prepared ahead of its install, shared by the handler
/// that fills it and the core that takes it.
#[derive(Clone, Default)]
pub struct PreparedSlot {
    slot: Arc<Mutex<Option<(u64, u64, Prepared)>>>,
    /// One preparation at a time: two would rebuild into the same files.
    busy: Arc<Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PreparedSlot {
    /// Held while a snapshot is prepared.
    pub fn one_at_a_time(&self) -> MutexGuard<'_, ()> {
        lock(&self.busy)
    }

    /// Keeps `prepared` for the snapshot at `index` of `term`, replacing
    /// any other.
    pub fn put(&self, term: u64, index: u64, prepared: Prepared) {
        *lock(&self.slot) = Some((term, index, prepared));
    }

    /// The state prepared for the snapshot at `index` of `term`, if any.
    pub fn take(&self, term: u64, index: u64) -> Option<Prepared> {
        let mut slot = lock(&self.slot);
        match slot.take() {
            Some((t, i, p)) if (t, i) == (term, index) => Some(p),
            other => {
                *slot = other;
                None
            }
        }
    }
}
