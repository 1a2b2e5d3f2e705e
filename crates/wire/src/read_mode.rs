//! Follower reads: where a session's reads may be served. Clients choose
//! it per connection with `PRAGMA dqlite_read_mode = MODE` (a dqlite-rs
//! extension the server answers itself); this is the mode's one spelling,
//! shared by the server, the client and the shell.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The name of the pragma.
pub const PRAGMA: &str = "dqlite_read_mode";

/// The largest bound `stale:MS` accepts: one day.
const MAX_STALE_MS: u64 = 86_400_000;

/// Where a session's reads are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Only on the leader; a follower answers every statement with
    /// NOT_LEADER (dqlite's behaviour, the default).
    #[default]
    Leader,
    /// On any node, linearizably: the node gets a read index from the
    /// leader and serves the read once it has applied up to it.
    Follower,
    /// On any node, from data at most this old: the read reflects every
    /// write acknowledged before (arrival − bound). A node whose last
    /// confirmation with the leader is older than the bound confirms
    /// again first, and refuses the read if it cannot.
    Stale(Duration),
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadMode::Leader => f.write_str("leader"),
            ReadMode::Follower => f.write_str("follower"),
            ReadMode::Stale(bound) => write!(f, "stale:{}", bound.as_millis()),
        }
    }
}

/// Why a read mode could not be parsed; the message lists what is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid dqlite_read_mode {0:?}: use leader, follower or stale:MS \
     (MS: the largest staleness allowed, in milliseconds, at most 86400000)"
)]
pub struct ParseReadModeError(pub String);

impl FromStr for ReadMode {
    type Err = ParseReadModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseReadModeError(s.to_owned());
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "leader" => Ok(ReadMode::Leader),
            "follower" | "linearizable" => Ok(ReadMode::Follower),
            other => {
                let ms = other.strip_prefix("stale:").ok_or_else(bad)?;
                let ms: u64 = ms.trim().parse().map_err(|_| bad())?;
                if ms > MAX_STALE_MS {
                    return Err(bad());
                }
                Ok(ReadMode::Stale(Duration::from_millis(ms)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        let cases: &[(&str, Option<ReadMode>)] = &[
            ("leader", Some(ReadMode::Leader)),
            ("FOLLOWER", Some(ReadMode::Follower)),
            ("linearizable", Some(ReadMode::Follower)),
            (
                "stale:250",
                Some(ReadMode::Stale(Duration::from_millis(250))),
            ),
            ("stale: 0", Some(ReadMode::Stale(Duration::ZERO))),
            ("stale:86400001", None),
            ("stale:-1", None),
            ("stale", None),
            ("anywhere", None),
        ];
        for &(text, want) in cases {
            assert_eq!(text.parse::<ReadMode>().ok(), want, "{text}");
        }
        for mode in [
            ReadMode::Leader,
            ReadMode::Follower,
            ReadMode::Stale(Duration::from_millis(75)),
        ] {
            assert_eq!(mode.to_string().parse::<ReadMode>(), Ok(mode));
        }
    }
}
