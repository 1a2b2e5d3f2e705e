//! SQLite's threading mode, which must be chosen before SQLite is first
//! used in the process.
#![allow(unsafe_code)]

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
    let option = match mode {
        ThreadingMode::MultiThread => rusqlite::ffi::SQLITE_CONFIG_MULTITHREAD,
        ThreadingMode::Serialized => rusqlite::ffi::SQLITE_CONFIG_SERIALIZED,
    };
    // SAFETY: sqlite3_config with a threading option takes no further
    // arguments; SQLite itself rejects the call (SQLITE_MISUSE) once it is
    // initialised, and we then report misuse. rusqlite (0.32) only checks
    // that SQLite is thread-safe, it never configures it, so nothing
    // overrides the mode chosen here.
    unsafe {
        if rusqlite::ffi::sqlite3_config(option) != rusqlite::ffi::SQLITE_OK {
            return Err(NodeError::Misuse(
                "SQLite's threading mode can only be set before any database is opened".into(),
            ));
        }
        if rusqlite::ffi::sqlite3_initialize() != rusqlite::ffi::SQLITE_OK {
            return Err(NodeError::Misuse("SQLite failed to initialise".into()));
        }
    }
    Ok(())
}
