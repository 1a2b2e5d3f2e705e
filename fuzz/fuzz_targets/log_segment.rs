//! A segment file of the raft log with arbitrary contents, as the open
//! segment (a torn tail is expected) or as a closed one (corruption):
//! loading returns entries or an error, never panics.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dqlite_consensus::storage::log::{log_dir, read_only};
use dqlite_consensus::storage::RealDisk;
use libfuzzer_sys::fuzz_target;

fn raft_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dqlite-fuzz-log-{}", std::process::id()));
        std::fs::create_dir_all(log_dir(&dir)).expect("a temporary directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, contents)) = data.split_first() else {
        return;
    };
    let dir = raft_dir();
    let logs = log_dir(dir);
    for entry in std::fs::read_dir(&logs).expect("the log directory").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let name = if kind & 1 == 0 { "open-1" } else { "00000000000000000001-00000000000000000010" };
    std::fs::write(logs.join(name), contents).expect("writing the segment");
    let _ = read_only(&RealDisk, dir, 0);
});
