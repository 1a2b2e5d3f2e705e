//! The dqlite-rs server: any dqlite client talks to it unchanged.
//!
//! Layout:
//! - [`listener`]: TCP or an abstract Unix socket (`@name`).
//! - [`server`]: the listener; binds, accepts, tells dqlite clients apart
//!   by their handshake, and shuts down in order.
//! - `conn`: one connection; framing, the request loop, streaming.
//! - `gateway`: one client session; what each request does.
//! - `writers`: each database's writer queue; a burst of writes runs
//!   back to back on one blocking thread.
//! - [`sql`]: SQL execution on a SQLite connection (blocking threads).
//! - [`policy`]: what client SQL may not do (denied pragmas, ATTACH).
//! - [`read_mode`]: follower reads, chosen per connection with
//!   `PRAGMA dqlite_read_mode`.
//! - [`databases`]: where SQLite connections come from; the seam where
//!   the replicated page store plugs in.
//! - [`cluster`]: leadership and membership as the gateway sees them.
//! - [`dir`]: the data directory, its lock and `node.json`.
//! - [`metrics`]: statements, connections and errors, for Prometheus.
//! - [`peer`]: the hook for peer traffic sharing the client port.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cluster;
mod conn;
pub mod databases;
pub mod dir;
mod error;
mod gateway;
pub mod listener;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod read_mode;
pub mod server;
pub mod sql;
mod writers;

pub use cluster::{Cluster, ClusterError, SingleNode};
pub use databases::{Databases, LocalDatabases, Unsettled};
pub use error::ServerError;
pub use listener::Listener;
pub use metrics::ServerMetrics;
pub use peer::{PeerHandler, PeerStream, Prefixed};
pub use read_mode::ReadMode;
pub use server::{listen, Server, ServerConfig};
