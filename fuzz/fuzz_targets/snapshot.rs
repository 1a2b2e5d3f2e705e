//! Snapshot bytes: as a snapshot file the consensus layer verifies
//! (header, checksum, trailer), and as the store's snapshot stream restored
//! into a database. Neither ever panics; a failed restore is an error.
#![no_main]

use std::sync::{Arc, OnceLock};

use dqlite_consensus::storage::snapshot::snapshot_name;
use dqlite_consensus::storage::{RealDisk, SnapshotStore};
use dqlite_consensus::State;
use dqlite_store::Store;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    snaps: SnapshotStore,
    store: Arc<Store>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let raft_dir =
            std::env::temp_dir().join(format!("dqlite-fuzz-snap-{}", std::process::id()));
        std::fs::create_dir_all(raft_dir.join("snap")).expect("a temporary directory");
        let snaps = SnapshotStore::read_only(Arc::new(RealDisk), &raft_dir);
        // One store for the whole run: each registers a SQLite VFS for good.
        let store = Store::memory().expect("a memory store");
        Fixture { snaps, store }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let path = f.snaps.dir().join(snapshot_name(1, 10));
    std::fs::write(&path, data).expect("writing the snapshot");
    if let Ok(info) = f.snaps.check(&path) {
        if let Ok(mut reader) = f.snaps.state_reader(&info) {
            let _ = f.store.state().restore(info.header.index.max(1), &mut reader);
        }
    }
    let _ = f.store.state().restore(10, &mut &data[..]);
});
