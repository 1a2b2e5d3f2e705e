//! Decode errors and the error codes that travel in FAILURE responses.

/// Generic SQL error (`SQLITE_ERROR`).
pub const SQLITE_ERROR: u64 = 1;
/// `SQLITE_BUSY`: contention, or a request that cannot run now.
pub const SQLITE_BUSY: u64 = 5;
/// `SQLITE_IOERR`.
pub const SQLITE_IOERR: u64 = 10;
/// `SQLITE_NOTFOUND`: no database opened, no such statement.
pub const SQLITE_NOTFOUND: u64 = 12;
/// `SQLITE_FULL`: the database or the disk is full.
pub const SQLITE_FULL: u64 = 13;
/// `SQLITE_PROTOCOL`.
pub const SQLITE_PROTOCOL: u64 = 15;
/// `SQLITE_AUTH`: the statement was refused when compiled (a denied
/// pragma, ATTACH of a file).
pub const SQLITE_AUTH: u64 = 23;
/// `SQLITE_RANGE`.
pub const SQLITE_RANGE: u64 = 25;
/// Not the leader: safe to retry on the leader.
pub const SQLITE_IOERR_NOT_LEADER: u64 = 10 | (40 << 8);
/// Leadership lost while a write was in flight: outcome unknown.
pub const SQLITE_IOERR_LEADERSHIP_LOST: u64 = 10 | (41 << 8);
/// Legacy not-leader code some old servers send; clients still recognise it.
pub const SQLITE_IOERR_NOT_LEADER_LEGACY: u64 = 10 | (32 << 8);
/// Legacy leadership-lost code.
pub const SQLITE_IOERR_LEADERSHIP_LOST_LEGACY: u64 = 10 | (33 << 8);
/// dqlite's own "not found" (DUMP of an unknown database).
pub const DQLITE_NOTFOUND: u64 = 1002;
/// dqlite's parse error: unknown request type, schema or format.
pub const DQLITE_PARSE: u64 = 1005;

/// Why a message body could not be decoded. Decoding never panics; every
/// malformed input maps to one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A field runs past the end of the body.
    #[error(
        "message truncated: {needed} more bytes needed at offset {offset} of a {len}-byte body"
    )]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// How many bytes it needs.
        needed: usize,
        /// The body length.
        len: usize,
    },
    /// A text field has no NUL before the end of the body.
    #[error("text at offset {offset} has no NUL terminator")]
    UnterminatedText {
        /// Where the text starts.
        offset: usize,
    },
    /// A text field is not UTF-8.
    #[error("text at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the text starts.
        offset: usize,
    },
    /// A message has an empty body, which no defined message has.
    #[error("message of type {0} has an empty body")]
    EmptyBody(u8),
    /// The request type code is not one this server knows.
    #[error("unrecognized request type")]
    UnknownRequest(u8),
    /// The response type code is not one this client knows.
    #[error("unrecognized response type {0}")]
    UnknownResponse(u8),
    /// The schema byte is not accepted for this message type.
    #[error("unrecognized schema version")]
    UnknownSchema {
        /// The message type.
        kind: u8,
        /// The schema byte received.
        schema: u8,
    },
    /// A CLUSTER request or SERVERS response with a format other than 0 or 1.
    #[error("unrecognized cluster format")]
    UnknownClusterFormat(u64),
    /// A value type code that is not defined.
    #[error("unknown value type code {0}")]
    UnknownValueType(u8),
    /// A value type that may not be sent as a parameter (UNIXTIME).
    #[error("value type {0} is not allowed as a parameter")]
    ParameterType(u8),
    /// A ROWS body whose end marker is neither DONE nor PART.
    #[error("rows message does not end with a DONE or PART marker")]
    BadRowsMarker,
}

impl DecodeError {
    /// The FAILURE code a server answers with when a request fails to decode.
    ///
    /// Schema errors on the SQL requests use 1 and everything else 1005, as
    /// current dqlite does (§2.3 of the wire reference).
    pub fn failure_code(&self) -> u64 {
        use crate::frame::request_type as t;
        match self {
            DecodeError::UnknownSchema { kind, .. }
                if matches!(
                    *kind,
                    t::PREPARE | t::EXEC | t::QUERY | t::EXEC_SQL | t::QUERY_SQL
                ) =>
            {
                SQLITE_ERROR
            }
            _ => DQLITE_PARSE,
        }
    }
}
