//! An embeddable dqlite-rs node: a dqlite-protocol server whose databases
//! are replicated over raft, in one process, on one port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dqlite_node::NodeError> {
//! use dqlite_node::{Node, Options, BOOTSTRAP_ID};
//!
//! // The first node bootstraps a cluster (id 1 or BOOTSTRAP_ID)...
//! let mut first = Node::new(BOOTSTRAP_ID, "127.0.0.1:9001", "/tmp/n1", Options::default());
//! first.start().await?;
//! // ...the others join through any member.
//! let options = Options::default().with_join(["127.0.0.1:9001"]);
//! let mut second = Node::new(0, "127.0.0.1:9002", "/tmp/n2", options);
//! second.start().await?;
//! // Any dqlite client can now use either address.
//! second.close().await?;
//! first.close().await?;
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`Node`], [`Options`] (`node.rs`): build, start, close.
//! - [`RaftCluster`] (`cluster.rs`): the server's view of the cluster
//!   (leader, members, barrier, ADD/ASSIGN/REMOVE/TRANSFER) over the
//!   consensus service.
//! - `peers.rs`: HTTP arriving on the client port: `/raft/` peer traffic
//!   and `GET /metrics`.
//! - `metrics.rs`: the Prometheus registry and every metric's name.
//! - `store.rs`: the replicated store as the server's databases, and
//!   its commits proposed through the consensus service.
//! - [`read_last_entry_info`], [`reconfigure_membership_ext`]
//!   (`offline.rs`): recovery of a stopped node's directory.
//! - [`generate_id`], [`BOOTSTRAP_ID`], [`set_sqlite_threading_mode`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cluster;
mod error;
mod manager;
mod metrics;
mod node;
mod offline;
mod peers;
pub mod roles;
mod sqlite;
mod store;

pub use cluster::RaftCluster;
pub use dqlite_client::Dial;
pub use dqlite_consensus::offline::LastEntryInfo;
pub use dqlite_consensus::transport::TlsConfig;
pub use dqlite_wire::{NodeInfo, Role};
pub use error::NodeError;
pub use node::{Node, Options, JOIN_MARKER};
pub use offline::{adopt_copied_directory, read_last_entry_info, reconfigure_membership_ext};
pub use sqlite::{set_sqlite_threading_mode, ThreadingMode};

/// The id that bootstraps a new cluster, as in go-dqlite (id 1 does too).
pub const BOOTSTRAP_ID: u64 = 0x2dc1_7185_8c31_55be;

/// Whether a node with this id bootstraps a cluster when it has no data
/// and nothing to join.
pub fn is_bootstrap_id(id: u64) -> bool {
    id == 1 || id == BOOTSTRAP_ID
}

/// A fresh node id for a node at `address`: random, never 0, 1 or
/// [`BOOTSTRAP_ID`].
///
/// ```
/// let id = dqlite_node::generate_id("127.0.0.1:9002");
/// assert!(id > 1 && id != dqlite_node::BOOTSTRAP_ID);
/// ```
pub fn generate_id(address: &str) -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // RandomState is seeded from the OS per process; the address and the
    // clock make ids differ between nodes started together.
    let mut h = RandomState::new().build_hasher();
    h.write(address.as_bytes());
    h.write_u128(nanos);
    // dqlite ids are positive int64 values on the Go side.
    let id = h.finish() & (i64::MAX as u64);
    if id <= 1 || id == BOOTSTRAP_ID {
        id.wrapping_add(2)
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let a = generate_id("127.0.0.1:9001");
        let b = generate_id("127.0.0.1:9001");
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(id > 1 && id != BOOTSTRAP_ID && id <= i64::MAX as u64);
        }
        assert!(is_bootstrap_id(1) && is_bootstrap_id(BOOTSTRAP_ID) && !is_bootstrap_id(2));
    }

    #[test]
    fn the_server_knows_the_stores_stale_commit_code() {
        assert_eq!(
            dqlite_server::sql::STORE_IOERR_STALE,
            dqlite_store::vfs::code::IOERR_STALE
        );
    }
}
