//! The pluggable application state machine.

use std::io::{self, Read, Write};

/// An application state machine replicated by the service.
///
/// Entries are applied in log order on every node, leader included, through
/// [`State::apply`]; the service keeps cluster membership, node ids and the
/// allowed-member list itself, so a `State` only holds application data.
/// Apply must be deterministic: the same entries give the same state.
pub trait State: Send + 'static {
    /// Applies the instruction at log `index`; returns whether its
    /// conditions held ("satisfied"). An unsatisfied instruction changes
    /// nothing but still advances the applied index. An error means the
    /// state cannot apply it (it cannot read its own data): nothing was
    /// applied, and the node stops applying and accepting proposals — going
    /// on would make its state differ from its peers' — until it restarts.
    fn apply(&mut self, index: u64, instruction: &[u8]) -> io::Result<bool>;

    /// Records that `index` was applied without an instruction for the State
    /// (a leader's no-op, a membership change).
    fn skip(&mut self, index: u64);

    /// Freezes the state at the applied index into an [`Image`] that a
    /// background thread writes out while entries go on being applied.
    /// Called on the driver thread: it must be cheap (share, don't copy).
    fn freeze(&self) -> io::Result<Box<dyn Image>>;

    /// For a state that keeps its data in durable files of its own (a
    /// disk-mode store): starts making them durable at the applied index,
    /// off the driver thread, and returns `Some(Ok(true))`;
    /// [`State::checkpointed`] tells when they are. A local snapshot then
    /// holds only metadata (its header says `files`), the log is compacted
    /// behind it, and a peer that needs a snapshot is streamed a fresh
    /// [`State::freeze`] image instead of the file. `Some(Ok(false))`: not
    /// possible now (one is being written, or a reader holds an older
    /// version); the core tries again shortly. `None` (the default):
    /// snapshots hold the frozen image.
    fn checkpoint(&mut self) -> Option<io::Result<bool>> {
        None
    }

    /// The applied index the state's own files were last made durable at
    /// (see [`State::checkpoint`]; a restore makes them durable at its
    /// index). A checkpoint that failed or was abandoned in the background
    /// is reported here, once, as an error. 0 (the default) for a state
    /// without files.
    fn checkpointed(&mut self) -> io::Result<u64> {
        Ok(0)
    }

    /// Replaces the whole state with a snapshot taken at `index`. The image
    /// may be of a later applied index (a fresh image streamed by a leader
    /// whose snapshot is its files): the state then reports that index from
    /// [`State::applied_index`], and the core skips the entries up to it.
    fn restore(&mut self, index: u64, input: &mut dyn Read) -> io::Result<()>;

    /// Something that rebuilds this state from a snapshot off the driver
    /// thread (see [`crate::prepare`]); `None` (the default): snapshots
    /// from the leader are restored in line.
    fn preparer(&self) -> Option<std::sync::Arc<dyn crate::Prepare>> {
        None
    }

    /// Replaces the whole state with one built by [`State::preparer`] for
    /// the snapshot at `index`; cheap (a swap). An error leaves the state
    /// unchanged, and the core restores from the file instead.
    fn install(&mut self, index: u64, prepared: crate::Prepared) -> io::Result<()> {
        let _ = (index, prepared);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this state prepares no snapshots",
        ))
    }

    /// The index of the last entry applied.
    fn applied_index(&self) -> u64;
}

/// The state as it was at one applied index, independent of later applies.
pub trait Image: Send + 'static {
    /// Streams the whole image into `out`.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> io::Result<()>;
}
