//! What a hostile server could send the client: decoding never panics.
#![no_main]

use dqlite_wire::{DecodeContext, Header, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let ctx = DecodeContext {
        legacy: data[0] & 1 == 1,
        cluster_format: u64::from(data[0] >> 1 & 1),
    };
    let header = Header::decode(data[1..9].try_into().unwrap());
    let _ = Response::decode(&header, &data[9..], ctx);
});
