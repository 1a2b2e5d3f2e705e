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
/// [`Error::Closed`], [`Error::Timeout`], [`Error::Decode`],
/// [`Error::Protocol`], [`Error::MessageTooLarge`], [`Error::NotDqlite`])
/// the connection is broken and every later call on it fails with
/// [`Error::ConnectionBroken`]. When a statement that may write was in
/// flight as the connection broke, the error is [`Error::OutcomeUnknown`].
///
/// Every error the client itself raises names the address it concerns;
/// the messages say what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node is not the leader (`SQLITE_IOERR_NOT_LEADER`, 10250, or
    /// the legacy 8202). Nothing was done: safe to retry on the leader.
    #[error(
        "{} is not the leader{}; nothing was done: retry on the leader",
        node_name(.address),
        server_detail(.message)
    )]
    NotLeader {
        /// 10250 or 8202.
        code: u64,
        /// The server's message.
        message: String,
        /// The node that answered.
        address: String,
    },
    /// Leadership was lost while a write was in flight
    /// (`SQLITE_IOERR_LEADERSHIP_LOST`, 10506, or the legacy 8458). The
    /// write may or may not have been committed.
    #[error(
        "the write may or may not have been applied: leadership was lost{}; \
         check before retrying",
        at_node(.address)
    )]
    LeadershipLost {
        /// 10506 or 8458.
        code: u64,
        /// The server's message.
        message: String,
        /// The node that answered.
        address: String,
    },
    /// Contention: `SQLITE_BUSY` or one of its extended codes
    /// (`code & 0xff == 5`). Retry later.
    #[error("{message} (code {code}): retry later")]
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
    /// The connection broke while a statement that may write was in
    /// flight: it may or may not have been applied.
    #[error("the write may or may not have been applied: {cause}")]
    OutcomeUnknown {
        /// What broke the connection.
        cause: Box<Error>,
    },
    /// Connecting to a node failed (refused, unreachable, ...).
    #[error("cannot connect to {address}: {cause}")]
    Connect {
        /// The address dialled.
        address: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The peer answered with something that is not the dqlite protocol
    /// (an HTTP server, another service, garbage).
    #[error(
        "{address} does not speak the dqlite protocol ({detail}); \
         check the address and port"
    )]
    NotDqlite {
        /// The peer.
        address: String,
        /// What it answered.
        detail: String,
    },
    /// A message from the server could not be decoded.
    #[error("malformed message from {address}: {cause}")]
    Decode {
        /// The server.
        address: String,
        /// The cause.
        cause: DecodeError,
    },
    /// The server broke the protocol (an unexpected response type, a
    /// result set whose batches disagree, ...).
    #[error("protocol error from {address}: {detail}")]
    Protocol {
        /// The server.
        address: String,
        /// What was wrong.
        detail: String,
    },
    /// The server announced a message larger than
    /// [`Config::max_message_size`](crate::Config::max_message_size).
    #[error(
        "{address} sent a message of {size} bytes, over the limit of {max} bytes; \
         raise Config::max_message_size to accept it"
    )]
    MessageTooLarge {
        /// The server.
        address: String,
        /// Announced body size in bytes.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The server closed the connection.
    #[error("{address} closed the connection")]
    Closed {
        /// The server.
        address: String,
    },
    /// Reading from or writing to the socket failed.
    #[error("I/O error talking to {address}: {cause}")]
    Io {
        /// The server.
        address: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// An operation did not finish in time.
    #[error("{operation} with {address} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The node it was done with.
        address: String,
        /// The limit that was hit.
        after: Duration,
    },
    /// An earlier call on this connection failed at the transport level
    /// or was cancelled half-way, so the stream position is unknown.
    #[error("the connection to {address} is broken by an earlier error; reconnect")]
    ConnectionBroken {
        /// The server.
        address: String,
    },
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
    /// Every listed address refused the connection: no node is listening
    /// there. Reported after one round instead of retrying for the whole
    /// [`Config::connect_timeout`](crate::Config::connect_timeout) (see
    /// [`Config::give_up_when_all_refuse`](crate::Config::give_up_when_all_refuse)).
    #[error(
        "no dqlite node is listening at {}: connection refused; \
         check that the nodes are running and the addresses are right",
        .addresses.join(", ")
    )]
    Unreachable {
        /// The addresses tried, in order.
        addresses: Vec<String>,
    },
    /// Leader discovery gave up.
    #[error(
        "no leader found through {} after {attempts} attempts{}; \
         check that a majority of the voters is running",
        .addresses.join(", "),
        last_error_suffix(.last_error)
    )]
    NoLeader {
        /// The addresses tried, in order.
        addresses: Vec<String>,
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

/// "127.0.0.1:9001", or "the node" when the address is not known.
fn node_name(address: &str) -> &str {
    if address.is_empty() {
        "the node"
    } else {
        address
    }
}

/// The server's own words, unless they only repeat "not leader".
fn server_detail(message: &str) -> String {
    if message.is_empty() || message.eq_ignore_ascii_case("not leader") {
        String::new()
    } else {
        format!(" ({message})")
    }
}

fn at_node(address: &str) -> String {
    if address.is_empty() {
        String::new()
    } else {
        format!(" on {address}")
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
        Error::failure_from(String::new(), code, message)
    }

    /// Classifies a FAILURE response from the node at `address`.
    pub(crate) fn failure_from(address: String, code: u64, message: String) -> Error {
        match code {
            SQLITE_IOERR_NOT_LEADER | SQLITE_IOERR_NOT_LEADER_LEGACY => Error::NotLeader {
                code,
                message,
                address,
            },
            SQLITE_IOERR_LEADERSHIP_LOST | SQLITE_IOERR_LEADERSHIP_LOST_LEGACY => {
                Error::LeadershipLost {
                    code,
                    message,
                    address,
                }
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
            | Error::OutcomeUnknown { .. }
            | Error::Connect { .. }
            | Error::NotDqlite { .. }
            | Error::Decode { .. }
            | Error::Protocol { .. }
            | Error::MessageTooLarge { .. }
            | Error::Closed { .. }
            | Error::Io { .. }
            | Error::Timeout { .. }
            | Error::ConnectionBroken { .. }
            | Error::LeaderUnknown { .. }
            | Error::LeaderMismatch { .. }
            | Error::Unreachable { .. }
            | Error::NoLeader { .. } => true,
            Error::Sql { code, .. } => *code == SQLITE_NOTFOUND,
            Error::Busy { .. } | Error::InvalidArgument(_) => false,
        }
    }

    /// True when a write may or may not have been applied: leadership
    /// was lost, or the connection broke while it was in flight. Check
    /// the data before retrying it.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::LeadershipLost { .. } | Error::OutcomeUnknown { .. }
        )
    }

    /// True for errors after which the connection cannot be used again.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Error::Decode { .. }
                | Error::Protocol { .. }
                | Error::MessageTooLarge { .. }
                | Error::NotDqlite { .. }
                | Error::Closed { .. }
                | Error::Io { .. }
                | Error::Timeout { .. }
                | Error::ConnectionBroken { .. }
                | Error::OutcomeUnknown { .. }
        )
    }

    /// True when the statement in flight may have reached the server: the
    /// connection broke after the request was (possibly) sent.
    pub(crate) fn broke_in_flight(&self) -> bool {
        self.breaks_connection() && !matches!(self, Error::ConnectionBroken { .. })
    }

    pub(crate) fn unexpected(address: &str, expected: &str, got: &dqlite_wire::Response) -> Error {
        Error::Protocol {
            address: address.to_owned(),
            detail: format!("expected a {expected} response, got type {}", got.kind()),
        }
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
        assert!(Error::ConnectionBroken {
            address: "a:1".into()
        }
        .needs_reconnect());
    }

    #[test]
    fn messages_name_the_address_and_what_to_do() {
        let err = Error::NoLeader {
            addresses: vec!["a:1".into(), "b:2".into()],
            attempts: 3,
            last_error: Some(Box::new(Error::LeaderUnknown {
                address: "a:1".into(),
            })),
        };
        assert_eq!(
            err.to_string(),
            "no leader found through a:1, b:2 after 3 attempts \
             (last error: node a:1 does not know the leader); \
             check that a majority of the voters is running"
        );
        let lost = Error::failure_from("a:1".into(), 10506, "leadership lost".into());
        assert!(lost.outcome_unknown());
        assert_eq!(
            lost.to_string(),
            "the write may or may not have been applied: leadership was lost on a:1; \
             check before retrying"
        );
        let closed = Error::OutcomeUnknown {
            cause: Box::new(Error::Closed {
                address: "a:1".into(),
            }),
        };
        assert!(closed.outcome_unknown());
        assert_eq!(
            closed.to_string(),
            "the write may or may not have been applied: a:1 closed the connection"
        );
        assert_eq!(
            Error::failure_from("a:1".into(), 10250, "not leader".into()).to_string(),
            "a:1 is not the leader; nothing was done: retry on the leader"
        );
    }
}
