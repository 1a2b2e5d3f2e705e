//! Node errors.

/// Why a node could not start, stop or run an offline helper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The server (listener, data directory) failed.
    #[error(transparent)]
    Server(#[from] dqlite_server::ServerError),
    /// The consensus service failed.
    #[error(transparent)]
    Consensus(#[from] dqlite_consensus::Error),
    /// An offline helper failed.
    #[error(transparent)]
    Offline(#[from] dqlite_consensus::offline::OfflineError),
    /// The options or the call order are wrong.
    #[error("{0}")]
    Misuse(String),
    /// Joining the cluster failed through every listed member.
    #[error("cannot join the cluster: {0}")]
    Join(String),
    /// A file-system operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A directory given to an offline helper holds no node.
    #[error("{dir} does not hold a dqlite-rs node ({reason}); pass the data directory of a stopped node")]
    NotANode {
        /// The directory.
        dir: String,
        /// What is missing.
        reason: &'static str,
    },
    /// The replicated store failed.
    #[error("store: {0}")]
    Store(String),
}
