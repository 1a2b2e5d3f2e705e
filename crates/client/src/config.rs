//! Timeouts, retry bounds and size limits.

use std::time::Duration;

use dqlite_wire::ReadMode;

/// Client settings. Every wait is bounded: a call never hangs forever.
///
/// ```
/// use std::time::Duration;
/// let mut config = dqlite_client::Config::default();
/// config.request_timeout = Duration::from_secs(5);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Limit for one connect, TLS handshake included (go-dqlite: 5 s).
    pub dial_timeout: Duration,
    /// Limit for one leader-discovery attempt against one listed address:
    /// dial, handshake, LEADER, the one redirect hop and CLIENT (go-dqlite:
    /// 15 s).
    pub attempt_timeout: Duration,
    /// Limit for a whole leader discovery, all rounds and backoffs included.
    pub connect_timeout: Duration,
    /// Most discovery rounds (one attempt per listed address each).
    pub max_rounds: u32,
    /// Backoff after the first failed round; it doubles each round.
    pub backoff_base: Duration,
    /// Longest backoff between rounds.
    pub backoff_max: Duration,
    /// Limit for one request and its first response, and for each further
    /// batch of a streamed result.
    pub request_timeout: Duration,
    /// Largest message body accepted from a server, in bytes. A larger
    /// length word is an error (and breaks the connection), never an
    /// allocation. DUMP responses carry whole databases: raise this to
    /// dump larger ones.
    pub max_message_size: u64,
    /// End leader discovery after a round in which every listed address
    /// refused the connection ([`Error::Unreachable`](crate::Error::Unreachable)),
    /// instead of retrying until `connect_timeout`: nothing listens there,
    /// and a user is better told at once. Turn off while nodes are still
    /// starting (a program that starts its cluster and connects at once).
    pub give_up_when_all_refuse: bool,
    /// Opens the connection to a node (default: TCP). Leader discovery
    /// and every connection use it.
    pub dial: crate::Dial,
    /// TLS over whatever `dial` opens; `None` for plaintext.
    pub tls: Option<crate::Tls>,
    /// Where reads may be served. Not [`ReadMode::Leader`]: every
    /// database is opened as `NAME?dqlite_read_mode=MODE`,
    /// and [`Database::connect_with`](crate::Database::connect_with) opens
    /// on the first listed node that answers instead of the leader, so
    /// list a different node first to spread reads. Writes on such a
    /// connection to a follower fail with [`Error::NotLeader`](crate::Error::NotLeader).
    pub read_mode: ReadMode,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dial_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            max_rounds: 50,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            request_timeout: Duration::from_secs(60),
            max_message_size: 256 << 20,
            give_up_when_all_refuse: true,
            dial: crate::Dial::tcp(),
            tls: None,
            read_mode: ReadMode::Leader,
        }
    }
}

impl Config {
    /// The backoff after failed round `round` (0-based): base · 2^round,
    /// capped at `backoff_max`.
    pub(crate) fn backoff(&self, round: u32) -> Duration {
        let factor = 1u32.checked_shl(round.min(31)).unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let c = Config::default();
        assert_eq!(c.backoff(0), Duration::from_millis(100));
        assert_eq!(c.backoff(1), Duration::from_millis(200));
        assert_eq!(c.backoff(3), Duration::from_millis(800));
        assert_eq!(c.backoff(4), Duration::from_secs(1));
        assert_eq!(c.backoff(1000), Duration::from_secs(1));
    }
}
