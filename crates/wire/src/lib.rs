//! The dqlite client wire protocol, byte for byte: the handshake, message
//! framing, every request and response, value type codes, parameter tuples
//! (schemas 0 and 1) and row batches with their DONE/PART markers.
//!
//! Pure: no I/O. The server and the client both use these codecs.
//! Decoding is bounds-checked and never panics: malformed bytes give a
//! [`DecodeError`], whose [`DecodeError::failure_code`] is what a server
//! answers with.
//!
//! Layout:
//! - [`codec`]: primitive fields (words, text, blob) on a byte cursor.
//! - [`frame`]: handshake values, the 8-byte header, message type codes.
//! - [`value`]: values, parameter tuples, row tuples.
//! - [`request`] and [`response`]: the messages.
//! - [`error`]: decode errors and wire error codes.
//! - [`read_mode`]: follower reads' `PRAGMA dqlite_read_mode` values.
//!
//! ```
//! use dqlite_wire::{Header, Request, Value};
//! let mut out = Vec::new();
//! let req = Request::ExecSql { db: 0, sql: "INSERT INTO t VALUES (?)".into(), params: vec![Value::Integer(1)] };
//! req.encode(&mut out);
//! let header = Header::decode(out[..8].try_into().unwrap());
//! assert_eq!(Request::decode(&header, &out[8..]), Ok(req));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod frame;
pub mod node;
pub mod read_mode;
pub mod request;
pub mod response;
pub mod value;

pub use error::DecodeError;
pub use frame::{encode_frame, Header, HEADER_SIZE, PROTOCOL_VERSION, PROTOCOL_VERSION_LEGACY};
pub use read_mode::ReadMode;
pub use request::Request;
pub use response::{DecodeContext, File, NodeInfo, Response, Role, Rows, RowsWriter};
pub use value::{ParamsFormat, Value};
