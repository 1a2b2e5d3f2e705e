//! The client's error type: one variant per cause a caller may act on
//! differently (retry elsewhere, retry later, report, reconnect).

use std::time::Duration;

use dqlite_wire::error::{
    SQLITE_BUSY, SQLITE_IOERR_LEADERSHIP_LOST, SQLITE_IOERR_LEADERSHIP_LOST_LEGACY,
    SQLITE_IOERR_NOT_LEADER, SQLITE_IOERR_NOT_LEADER_LEGACY, SQLITE_NOTFOUND,
};
use dqlite_wire::DecodeError;

/// A client result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a dqlite node.
///
/// FAILURE responses are classified as go-dqlite does (§8.3 of the wire
/// reference): leadership errors ([`Error::NotLeader`],
/// [`Error::LeadershipLost`]), contention ([`Error::Busy`]) and every other
/// SQL or dqlite error ([`Error::Sql`]). After any of those the connection
/// stays usable. After a transport-level error ([`Error::Io`],
/// [`Error::Timeout`], [`Error::Decode`], [`Error::Protocol`],
/// [`Error::MessageTooLarge`]) the connection is broken and every later
/// call on it fails with [`Error::ConnectionBroken`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node is not the leader (`SQLITE_IOERR_NOT_LEADER`, 10250, or
    /// the legacy 8202). Nothing was done: safe to retry on the leader.
    #[error("not leader: {message}")]
    NotLeader {
        /// 10250 or 8202.
        code: u64,
        /// The server's message.
        message: String,
    },
    /// Leadership was lost while a write was in flight
    /// (`SQLITE_IOERR_LEADERSHIP_LOST`, 10506, or the legacy 8458). The
    /// write may or may not have been committed.
    #[error("leadership lost: {message}")]
    LeadershipLost {
        /// 10506 or 8458.
        code: u64,
        /// The server's message.
        message: String,
    },
    /// Contention: `SQLITE_BUSY` or one of its extended codes
    /// (`code & 0xff == 5`). Retry later.
    #[error("busy: {message} (code {code})")]
    Busy {
        /// The extended result code.
        code: u64,
        /// The server's message.
        message: String,
    },
    /// Any other FAILURE: an SQL error with SQLite's (extended) code, or a
    /// dqlite error (1001, 1002, 1005, ...).
    #[error("{message} (code {code})")]
    Sql {
        /// The SQLite or dqlite code.
        code: u64,
        /// The server's message.
        message: String,
    },
    /// A message from the server could not be decoded.
    #[error("malformed message from the server: {0}")]
    Decode(#[from] DecodeError),
    /// The server broke the protocol (an unexpected response type, a
    /// result set whose batches disagree, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server announced a message larger than
    /// [`Config::max_message_size`](crate::Config::max_message_size).
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Announced body size in bytes.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// Reading from or writing to the socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The limit that was hit.
        after: Duration,
    },
    /// An earlier call on this connection failed at the transport level
    /// or was cancelled half-way, so the stream position is unknown.
    #[error("connection is broken by an earlier error; reconnect")]
    ConnectionBroken,
    /// A node answered LEADER with no leader (it is not a voter, or an
    /// election is in progress).
    #[error("node {address} does not know the leader")]
    LeaderUnknown {
        /// The node asked.
        address: String,
    },
    /// The node a first node named as leader names yet another node.
    #[error("node {address} was reported as leader but names {reported:?} as leader")]
    LeaderMismatch {
        /// The node asked.
        address: String,
        /// Whom it reported.
        reported: String,
    },
    /// Leader discovery gave up.
    #[error("no leader found after {attempts} attempts{}", last_error_suffix(.last_error))]
    NoLeader {
        /// Connection attempts made.
        attempts: u32,
        /// Why the last attempt failed.
        last_error: Option<Box<Error>>,
    },
    /// A caller-side mistake: an empty address list, a statement used on
    /// another connection, a row value of another type, ...
    #[error("{0}")]
    InvalidArgument(String),
}

fn last_error_suffix(last: &Option<Box<Error>>) -> String {
    match last {
        Some(err) => format!(" (last error: {err})"),
        None => String::new(),
    }
}

impl Error {
    /// Classifies a FAILURE response.
    ///
    /// ```
    /// use dqlite_client::Error;
    /// assert!(matches!(Error::from_failure(10250, "not leader".into()), Error::NotLeader { .. }));
    /// assert!(matches!(Error::from_failure(517, "locked".into()), Error::Busy { .. }));
    /// assert!(matches!(Error::from_failure(1, "syntax".into()), Error::Sql { code: 1, .. }));
    /// ```
    pub fn from_failure(code: u64, message: String) -> Error {
        match code {
            SQLITE_IOERR_NOT_LEADER | SQLITE_IOERR_NOT_LEADER_LEGACY => {
                Error::NotLeader { code, message }
            }
            SQLITE_IOERR_LEADERSHIP_LOST | SQLITE_IOERR_LEADERSHIP_LOST_LEGACY => {
                Error::LeadershipLost { code, message }
            }
            c if c & 0xff == SQLITE_BUSY => Error::Busy { code, message },
            _ => Error::Sql { code, message },
        }
    }

    /// The FAILURE code, if this error came from the server.
    pub fn code(&self) -> Option<u64> {
        match self {
            Error::NotLeader { code, .. }
            | Error::LeadershipLost { code, .. }
            | Error::Busy { code, .. }
            | Error::Sql { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's message, if this error came from the server.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            Error::NotLeader { message, .. }
            | Error::LeadershipLost { message, .. }
            | Error::Busy { message, .. }
            | Error::Sql { message, .. } => Some(message),
            _ => None,
        }
    }

    /// True when the connection should be dropped and leader discovery
    /// run again: leadership errors, `SQLITE_NOTFOUND` (12, "no database
    /// opened" after a leadership change, as go-dqlite treats it) and every
    /// transport-level error. Whether the failed statement may be re-run is
    /// a separate question: after [`Error::LeadershipLost`], a timeout or an
    /// I/O error its outcome is unknown.
    pub fn needs_reconnect(&self) -> bool {
        match self {
            Error::NotLeader { .. }
            | Error::LeadershipLost { .. }
            | Error::Decode(_)
            | Error::Protocol(_)
            | Error::MessageTooLarge { .. }
            | Error::Io(_)
            | Error::Timeout { .. }
            | Error::ConnectionBroken
            | Error::LeaderUnknown { .. }
            | Error::LeaderMismatch { .. }
            | Error::NoLeader { .. } => true,
            Error::Sql { code, .. } => *code == SQLITE_NOTFOUND,
            Error::Busy { .. } | Error::InvalidArgument(_) => false,
        }
    }

    /// True for errors after which the connection cannot be used again.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Error::Decode(_)
                | Error::Protocol(_)
                | Error::MessageTooLarge { .. }
                | Error::Io(_)
                | Error::Timeout { .. }
                | Error::ConnectionBroken
        )
    }

    pub(crate) fn unexpected(expected: &str, got: &dqlite_wire::Response) -> Error {
        Error::Protocol(format!(
            "expected a {expected} response, got type {}",
            got.kind()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_are_classified_as_go_dqlite_does() {
        for code in [10250, 8202] {
            assert!(matches!(
                Error::from_failure(code, String::new()),
                Error::NotLeader { .. }
            ));
        }
        for code in [10506, 8458] {
            assert!(matches!(
                Error::from_failure(code, String::new()),
                Error::LeadershipLost { .. }
            ));
        }
        for code in [5, 5 | (1 << 8), 5 | (2 << 8), 5 | (3 << 8)] {
            assert!(matches!(
                Error::from_failure(code, String::new()),
                Error::Busy { .. }
            ));
        }
        for code in [0, 1, 10, 12, 19, 2067, 1005] {
            let err = Error::from_failure(code, "m".into());
            assert!(matches!(err, Error::Sql { .. }), "{code}");
            assert_eq!(err.code(), Some(code));
            assert_eq!(err.server_message(), Some("m"));
        }
    }

    #[test]
    fn reconnect_hints() {
        assert!(Error::from_failure(10250, String::new()).needs_reconnect());
        assert!(Error::from_failure(12, String::new()).needs_reconnect());
        assert!(!Error::from_failure(5, String::new()).needs_reconnect());
        assert!(!Error::from_failure(1, String::new()).needs_reconnect());
        assert!(Error::ConnectionBroken.needs_reconnect());
    }

    #[test]
    fn no_leader_message_names_the_last_error() {
        let err = Error::NoLeader {
            attempts: 3,
            last_error: Some(Box::new(Error::LeaderUnknown {
                address: "a:1".into(),
            })),
        };
        assert_eq!(
            err.to_string(),
            "no leader found after 3 attempts (last error: node a:1 does not know the leader)"
        );
    }
}
