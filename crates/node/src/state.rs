//! What the consensus service replicates until the page store is wired in:
//! nothing but the applied index (membership lives in the service itself).

use std::io::{self, Read, Write};

use dqlite_consensus::State;

/// A State with no application data.
#[derive(Debug, Default)]
pub(crate) struct EmptyState {
    applied: u64,
}

impl State for EmptyState {
    fn apply(&mut self, index: u64, _instruction: &[u8]) -> bool {
        self.applied = index;
        true
    }

    fn skip(&mut self, index: u64) {
        self.applied = index;
    }

    fn snapshot(&self, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    fn restore(&mut self, index: u64, _input: &mut dyn Read) -> io::Result<()> {
        self.applied = index;
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}
