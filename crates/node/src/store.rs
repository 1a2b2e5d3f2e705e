//! The replicated store behind the server: SQLite connections over the
//! store's VFS, and commits proposed through the consensus service.

use std::sync::Arc;
use std::time::Duration;

use dqlite_consensus::{Error, Service};
use dqlite_server::databases::BoxFuture;
use dqlite_server::sql::Failure;
use dqlite_server::{Databases, Unsettled};
use dqlite_store::SettleError;
use dqlite_store::{OnFailure, ProposeError, Proposer, Store};
use dqlite_wire::error::{
    SQLITE_BUSY, SQLITE_FULL, SQLITE_IOERR, SQLITE_IOERR_LEADERSHIP_LOST, SQLITE_IOERR_NOT_LEADER,
};
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

    fn settle(&self) -> Result<bool, Failure> {
        dqlite_store::settle(SETTLE_TIMEOUT).map_err(settle_failure)
    }

    fn forget(&self) {
        drop(dqlite_store::pending());
    }

    fn read_committed(&self, on: bool) {
        dqlite_store::read_committed(on);
    }

    fn unsettled(&self) -> Box<dyn Unsettled> {
        Box::new(StorePending(dqlite_store::pending()))
    }
}

/// What a statement left in flight on the store's chain.
struct StorePending(dqlite_store::Pending);

impl Unsettled for StorePending {
    fn settled(self: Box<Self>) -> BoxFuture<'static, Result<bool, Failure>> {
        let pending = self.0;
        Box::pin(async move {
            let wrote = pending.wrote();
            match tokio::time::timeout(SETTLE_TIMEOUT, pending.settled()).await {
                Ok(Ok(())) => Ok(wrote),
                Ok(Err(e)) => Err(settle_failure(e)),
                Err(_) => Err(settle_failure(SettleError::LeadershipLost)),
            }
        })
    }
}

/// The FAILURE a client gets for a commit that did not settle.
fn settle_failure(e: SettleError) -> Failure {
    let code = match e {
        SettleError::Stale => SQLITE_BUSY,
        SettleError::NotLeader => SQLITE_IOERR_NOT_LEADER,
        SettleError::LeadershipLost => SQLITE_IOERR_LEADERSHIP_LOST,
        SettleError::DiskFull => SQLITE_FULL,
        SettleError::Other(_) => SQLITE_IOERR,
    };
    Failure::new(code, e.to_string())
}

/// A backstop only: the service answers every entry it accepted (applied,
/// or failed once leadership is lost or it stops); past this the outcome
/// is reported unknown.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Proposes the store's commit entries through the service, without
/// waiting for them: the store learns of success when the entry is applied,
/// and of failure through the callback.
pub(crate) struct ServiceProposer {
    pub service: Service,
}

fn propose_error(e: Error) -> ProposeError {
    match e {
        // Nothing was appended: safe to retry on the leader.
        Error::NotLeader { .. } | Error::Dropped | Error::Uninitialized => ProposeError::NotLeader,
        Error::LeadershipLost => ProposeError::LeadershipLost,
        Error::Timeout => ProposeError::Timeout,
        Error::DiskFull(why) => ProposeError::DiskFull(why),
        other => ProposeError::Other(other.to_string()),
    }
}

impl Proposer for ServiceProposer {
    fn propose(&self, entry: Vec<u8>, failed: OnFailure) {
        if !self.service.is_leader() {
            return failed(ProposeError::NotLeader);
        }
        // Handed over here, on the writer's thread, so the entries of a
        // database reach the log in the order they were built. The outcome
        // comes back on the driver thread, with no task to wake: success is
        // seen at apply, only a failure is passed on.
        self.service.submit(entry, move |outcome| {
            if let Err(e) = outcome {
                failed(propose_error(e));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_sqlite_full_for_the_client() {
        // The chain a commit's failure takes: consensus refuses the
        // proposal, the store settles the ticket, the server answers.
        let consensus = Error::DiskFull("I/O error on raft/log/open-1: No space left".into());
        let settled = SettleError::from(propose_error(consensus));
        assert_eq!(settled, SettleError::DiskFull);
        let failure = settle_failure(settled);
        assert_eq!(failure.code, SQLITE_FULL);
        assert_eq!(failure.code, 13);
        assert_eq!(failure.message, "database or disk is full");
        // Other storage failures stay I/O errors.
        let other = settle_failure(SettleError::from(propose_error(Error::StorageUnavailable(
            "I/O error on raft/meta: EIO".into(),
        ))));
        assert_eq!(other.code, SQLITE_IOERR);
    }
}
