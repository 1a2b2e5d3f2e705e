//! A peer's HTTP body: framed raft messages. Decoding never panics, and
//! every entry payload in them goes through the codec and, for state
//! instructions, the store's entry decoder, as the apply path would.
#![no_main]

use dqlite_consensus::codec::{self, Payload};
use dqlite_consensus::transport::decode_frames;
use dqlite_store::entry::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The store's entry decoder sees the raw bytes too: a peer's entry is
    // only checksummed by the log, not by the store.
    let _ = Entry::decode(data);
    let Some(messages) = decode_frames(data) else {
        return;
    };
    for m in &messages {
        for e in m.get_entries() {
            if let Payload::State(instruction) = codec::decode(&e.data) {
                let _ = Entry::decode(instruction);
            }
            let _ = codec::decode_member_changes(&e.data);
        }
    }
});
