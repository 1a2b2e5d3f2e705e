//! The replicated store behind the server: SQLite connections over the
//! store's VFS, and commits proposed through the consensus service.

use std::sync::Arc;
use std::time::Duration;

use dqlite_consensus::{Error, Service};
use dqlite_server::Databases;
use dqlite_store::{ProposeError, Proposer, Store};
use rusqlite::Connection;

/// [`Databases`] over the replicated store.
pub(crate) struct StoreDatabases(pub Arc<Store>);

impl Databases for StoreDatabases {
    fn open(&self, name: &str) -> rusqlite::Result<Connection> {
        self.0.open(name)
    }

    fn open_existing(&self, name: &str) -> rusqlite::Result<Option<Connection>> {
        self.0.open_existing(name)
    }
}

/// Proposes the store's commit entries through the service. Called on a
/// SQLite (blocking) thread, so it may block on the runtime.
pub(crate) struct ServiceProposer {
    pub service: Service,
    pub runtime: tokio::runtime::Handle,
    /// Past this, the outcome is unknown (reported as leadership lost).
    pub timeout: Duration,
}

impl Proposer for ServiceProposer {
    fn propose(&self, entry: Vec<u8>) -> Result<bool, ProposeError> {
        if !self.service.is_leader() {
            return Err(ProposeError::NotLeader);
        }
        let result = self
            .runtime
            .block_on(self.service.exec(entry, self.timeout));
        result.map_err(|e| match e {
            // Nothing was appended: safe to retry on the leader.
            Error::NotLeader { .. } | Error::Dropped | Error::Uninitialized => {
                ProposeError::NotLeader
            }
            Error::LeadershipLost => ProposeError::LeadershipLost,
            Error::Timeout => ProposeError::Timeout,
            other => ProposeError::Other(other.to_string()),
        })
    }
}
