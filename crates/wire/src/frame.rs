//! Handshake and the 8-byte message header (§1.2, §2 of the wire reference).

use crate::codec::pad8;

/// The protocol version every current client sends first.
pub const PROTOCOL_VERSION: u64 = 1;
/// The legacy pre-1.0 protocol version; only the LEADER answer differs.
pub const PROTOCOL_VERSION_LEGACY: u64 = 0x8610_4dd7_6043_3fe5;

/// Size of the message header in bytes.
pub const HEADER_SIZE: usize = 8;

/// Request type codes (client to server).
pub mod request_type {
    #![allow(missing_docs)]
    pub const LEADER: u8 = 0;
    pub const CLIENT: u8 = 1;
    pub const HEARTBEAT: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const PREPARE: u8 = 4;
    pub const EXEC: u8 = 5;
    pub const QUERY: u8 = 6;
    pub const FINALIZE: u8 = 7;
    pub const EXEC_SQL: u8 = 8;
    pub const QUERY_SQL: u8 = 9;
    pub const INTERRUPT: u8 = 10;
    pub const CONNECT: u8 = 11;
    pub const ADD: u8 = 12;
    pub const ASSIGN: u8 = 13;
    pub const REMOVE: u8 = 14;
    pub const DUMP: u8 = 15;
    pub const CLUSTER: u8 = 16;
    pub const TRANSFER: u8 = 17;
    pub const DESCRIBE: u8 = 18;
    pub const WEIGHT: u8 = 19;
}

/// Response type codes (server to client).
pub mod response_type {
    #![allow(missing_docs)]
    pub const FAILURE: u8 = 0;
    pub const SERVER: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const SERVERS: u8 = 3;
    pub const DB: u8 = 4;
    pub const STMT: u8 = 5;
    pub const RESULT: u8 = 6;
    pub const ROWS: u8 = 7;
    pub const EMPTY: u8 = 8;
    pub const FILES: u8 = 9;
    pub const METADATA: u8 = 10;
}

/// A message header: body length in words, type code and schema byte.
///
/// ```
/// use dqlite_wire::Header;
/// let h = Header::decode([3, 0, 0, 0, 1, 0, 0, 0]);
/// assert_eq!((h.words, h.kind, h.schema), (3, 1, 0));
/// assert_eq!(h.body_len(), 24);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length in 8-byte words.
    pub words: u32,
    /// Request or response type code.
    pub kind: u8,
    /// Body format version for this type.
    pub schema: u8,
}

impl Header {
    /// Parses the 8 header bytes. Every bit pattern is a header; the
    /// `extra` field is ignored, as by every dqlite implementation.
    pub fn decode(bytes: [u8; HEADER_SIZE]) -> Self {
        Self {
            words: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            kind: bytes[4],
            schema: bytes[5],
        }
    }

    /// The 8 header bytes, with `extra` zero.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let w = self.words.to_le_bytes();
        [w[0], w[1], w[2], w[3], self.kind, self.schema, 0, 0]
    }

    /// Body length in bytes.
    pub fn body_len(&self) -> u64 {
        u64::from(self.words) * 8
    }
}

/// Appends one framed message to `out`: reserves the header, lets `body`
/// write the body, then fills in the length.
///
/// The body writer must leave the buffer 8-byte aligned relative to the
/// body start; this pads with zeros if it did not.
pub fn encode_frame(out: &mut Vec<u8>, kind: u8, schema: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_SIZE]);
    body(out);
    let body_len = out.len() - start - HEADER_SIZE;
    out.resize(start + HEADER_SIZE + pad8(body_len), 0);
    let words = u32::try_from(pad8(body_len) / 8).unwrap_or(u32::MAX);
    let header = Header {
        words,
        kind,
        schema,
    };
    out[start..start + HEADER_SIZE].copy_from_slice(&header.encode());
}
