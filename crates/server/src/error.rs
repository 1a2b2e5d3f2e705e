//! Errors that stop a server from starting or running. Per-request errors
//! never appear here: they become FAILURE responses.

use std::path::PathBuf;

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A file-system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another dqlite-rs process; stop it or choose another --dir")]
    DirLocked(PathBuf),
    /// A file in the data directory cannot be understood.
    #[error("{0}")]
    Corrupt(String),
    /// The configuration contradicts what the directory holds.
    #[error("{0}")]
    Config(String),
}
