//! Any bytes after the handshake: split into frames as the server does and
//! decode each. Decoding must never panic, and whatever decodes must
//! re-encode to bytes that decode and re-encode identically (bytes, not
//! values, since a NaN parameter is not equal to itself).
#![no_main]

use dqlite_wire::{Header, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= 8 {
        let header = Header::decode(rest[..8].try_into().unwrap());
        rest = &rest[8..];
        let len = (header.body_len() as usize).min(rest.len());
        let (body, tail) = rest.split_at(len);
        rest = tail;
        if let Ok(req) = Request::decode(&header, body) {
            let mut out = Vec::new();
            req.encode(&mut out);
            let again = Header::decode(out[..8].try_into().unwrap());
            let decoded = Request::decode(&again, &out[8..]).expect("re-encoded request decodes");
            let mut out2 = Vec::new();
            decoded.encode(&mut out2);
            assert_eq!(out, out2);
        }
    }
});
