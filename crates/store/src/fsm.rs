//! The store as a consensus state machine: the one apply path that every
//! node (leader included), log replay and snapshot restore go through.
//!
//! Snapshot format (little-endian): magic `dqrs`, version byte, the applied
//! index the image is of (since format 3), database count; per database its
//! name, change sequence, version id (since format 2), page size, size in
//! pages and stored page count, then each stored page as its number and
//! bytes.
//!
//! In disk mode a local snapshot holds no pages: [`State::checkpoint`]
//! starts making the database files durable at the applied index (in the
//! background, `crate::checkpoint`) and the snapshot records only
//! metadata; a peer is streamed a fresh image instead, whose
//! applied index may be later than the snapshot's. Written page by page into the consensus snapshot stream, never as
//! one buffer, and in disk mode restored page by page into a file, so
//! neither side holds a database in memory.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dqlite_consensus::{Image, Prepare, Prepared, State};
use tracing::{error, warn};

use crate::entry::{valid_page_size, Entry};
use crate::pages::Version;
use crate::Shared;

const MAGIC: &[u8; 4] = b"dqrs";
const VERSION: u8 = 3;

/// Applies committed entries to a [`crate::Store`].
pub struct StoreState {
    shared: Arc<Shared>,
    applied: u64,
}

impl StoreState {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let applied = shared.opened_at;
        Self { shared, applied }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_u32(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Every database's version at one applied index.
struct StoreImage {
    applied: u64,
    versions: Vec<(String, Arc<Version>)>,
}

impl Image for StoreImage {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&[VERSION])?;
        out.write_all(&self.applied.to_le_bytes())?;
        out.write_all(&(self.versions.len() as u32).to_le_bytes())?;
        for (name, v) in &self.versions {
            out.write_all(&(name.len() as u32).to_le_bytes())?;
            out.write_all(name.as_bytes())?;
            out.write_all(&v.seq.to_le_bytes())?;
            out.write_all(&v.id.to_le_bytes())?;
            out.write_all(&v.page_size.to_le_bytes())?;
            out.write_all(&v.pages.to_le_bytes())?;
            let stored = if v.page_size == 0 { 0 } else { v.pages };
            out.write_all(&stored.to_le_bytes())?;
            let zeros = vec![0u8; v.page_size as usize];
            for pgno in 1..=stored {
                out.write_all(&pgno.to_le_bytes())?;
                match v.page(pgno)? {
                    Some(p) => out.write_all(&p)?,
                    None => out.write_all(&zeros)?,
                }
            }
        }
        Ok(())
    }
}

/// Every database rebuilt from a snapshot, waiting to be swapped in.
struct PreparedStore {
    versions: Vec<(String, Version)>,
    applied: u64,
    /// The generation of files it was restored into (disk mode), claimed
    /// for it alone.
    generation: u64,
}

/// Rebuilds the store from a snapshot on any thread (see
/// `dqlite_consensus::prepare`).
struct StorePreparer(Arc<Shared>);

impl Prepare for StorePreparer {
    fn prepare(&self, index: u64, input: &mut dyn Read) -> io::Result<Prepared> {
        Ok(Box::new(prepare(&self.0, index, input)?))
    }
}

impl StoreState {
    /// Swaps in every database of `prepared`: O(databases) in memory, and
    /// in disk mode one record write.
    fn swap_in(&mut self, prepared: PreparedStore) -> io::Result<()> {
        if prepared.generation <= self.shared.generation() {
            return Err(io::Error::other(
                "a later restore was installed after this one was prepared",
            ));
        }
        self.shared
            .replace_all(prepared.versions, prepared.applied, prepared.generation)?;
        self.applied = prepared.applied;
        Ok(())
    }
}

/// Reads a snapshot image into new versions (in disk mode, into the next
/// generation's files), leaving the live store alone.
fn prepare(shared: &Shared, index: u64, input: &mut dyn Read) -> io::Result<PreparedStore> {
    let generation = shared.claim_generation();
    let mut magic = [0u8; 5];
    input.read_exact(&mut magic)?;
    let format = magic[4];
    if &magic[..4] != MAGIC || !(1..=VERSION).contains(&format) {
        return Err(invalid("not a dqlite-rs store snapshot"));
    }
    // An image may be of a later index (streamed by a leader whose
    // snapshot is its files), never of an earlier one but for the
    // bootstrap snapshot: the empty state, frozen before entry 1.
    let applied = if format >= 3 {
        read_u64(input)?.max(index)
    } else {
        index
    };
    let count = read_u32(input)?;
    let mut versions = Vec::new();
    for _ in 0..count {
        let len = read_u32(input)? as usize;
        if len > 1 << 20 {
            return Err(invalid("database name longer than 1 MiB"));
        }
        let mut name = vec![0u8; len];
        input.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| invalid("database name is not UTF-8"))?;
        let seq = read_u64(input)?;
        let id = if format >= 2 { read_u64(input)? } else { 0 };
        let page_size = read_u32(input)?;
        let pages = read_u32(input)?;
        let stored = read_u32(input)?;
        if stored > 0 && !valid_page_size(page_size) {
            return Err(invalid(format!("invalid page size {page_size}")));
        }
        if stored > pages {
            return Err(invalid(format!(
                "{stored} pages stored in a {pages}-page database"
            )));
        }
        let mut restorer = shared.restorer(&name, generation)?;
        for _ in 0..stored {
            let pgno = read_u32(input)?;
            if pgno == 0 || pgno > pages {
                return Err(invalid(format!(
                    "page {pgno} outside a {pages}-page database"
                )));
            }
            let mut page = vec![0u8; page_size as usize];
            input.read_exact(&mut page)?;
            restorer.page(pgno, page)?;
        }
        versions.push((name, restorer.finish((seq, id), page_size, pages)?));
    }
    Ok(PreparedStore {
        versions,
        applied,
        generation,
    })
}

impl State for StoreState {
    fn apply(&mut self, index: u64, instruction: &[u8]) -> io::Result<bool> {
        let satisfied = match Entry::decode(instruction) {
            Ok(entry) => self.shared.apply(entry)?,
            Err(e) => {
                // Same bytes on every node, so every node skips it alike.
                error!(index, "skipping an entry that is not a store entry: {e}");
                false
            }
        };
        self.applied = index;
        if self.shared.checkpoint_due() {
            // In the background; until it is durable the changes stay in
            // memory and the log, and a later apply tries again if this
            // one could not start.
            if let Err(e) = self.shared.start_checkpoint(index) {
                warn!(index, "cannot start a checkpoint: {e}");
            }
        }
        Ok(satisfied)
    }

    fn skip(&mut self, index: u64) {
        self.applied = index;
    }

    fn freeze(&self) -> io::Result<Box<dyn Image>> {
        // Versions are immutable and shared: freezing costs a pointer per
        // database, and the store keeps checkpoints from changing the files
        // under them until the image is written.
        Ok(Box::new(StoreImage {
            applied: self.applied,
            versions: self.shared.freeze(),
        }))
    }

    fn checkpoint(&mut self) -> Option<io::Result<bool>> {
        self.shared
            .is_disk()
            .then(|| self.shared.start_checkpoint(self.applied))
    }

    fn checkpointed(&mut self) -> io::Result<u64> {
        match self.shared.checkpoints.take_error() {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(self.shared.checkpoints.durable.load(Ordering::Relaxed)),
        }
    }

    fn restore(&mut self, index: u64, input: &mut dyn Read) -> io::Result<()> {
        let prepared = prepare(&self.shared, index, input)?;
        self.swap_in(prepared)
    }

    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        Some(Arc::new(StorePreparer(Arc::clone(&self.shared))))
    }

    fn install(&mut self, _index: u64, prepared: Prepared) -> io::Result<()> {
        let prepared = prepared
            .downcast::<PreparedStore>()
            .map_err(|_| invalid("not a store prepared by this store"))?;
        self.swap_in(*prepared)
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}
