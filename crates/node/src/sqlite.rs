//! SQLite's threading mode, which must be chosen before SQLite is first
//! used in the process.

use crate::NodeError;

/// SQLite threading modes a node can run under. Single-thread mode is not
/// offered: the node uses SQLite from several threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadingMode {
    /// Connections are not shared between threads at once (the default,
    /// and what the node does): no per-connection mutexes.
    MultiThread,
    /// SQLite serialises every call itself.
    Serialized,
}

/// Sets SQLite's threading mode (go-dqlite's `ConfigMultiThread`). Call it
/// before any database is opened in this process; later calls fail.
///
/// ```
/// dqlite_node::set_sqlite_threading_mode(dqlite_node::ThreadingMode::MultiThread).ok();
/// ```
pub fn set_sqlite_threading_mode(mode: ThreadingMode) -> Result<(), NodeError> {
    dqlite_store::vfs::set_threading_mode(mode == ThreadingMode::Serialized).map_err(|_| {
        NodeError::Misuse(
            "SQLite's threading mode can only be set before any database is opened".into(),
        )
    })
}
