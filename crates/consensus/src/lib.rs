//! dqlite-rs's raft coordination service.
//!
//! # Layout
//!
//! - [`core`]: the pure, deterministic consensus core (raft-rs `RawNode`,
//!   proposals, reads, membership); inputs in, actions out.
//! - [`storage`]: the segmented log, hard state and snapshots, all behind
//!   the [`storage::Disk`] seam; the in-memory view raft-rs reads.
//! - [`state`]: the pluggable application [`State`]; [`kv`] is a key-value one.
//! - [`membership`]: the replicated cluster registry (ids, addresses, roles,
//!   allowed members, id counter).
//! - [`codec`]: how entries are encoded.

pub mod codec;
pub mod core;
pub mod kv;
pub mod membership;
pub mod offline;
pub mod state;
pub mod storage;

pub use crate::state::State;
pub mod boot;
pub mod driver;
pub mod persist;
pub mod service;
pub mod transport;

pub use crate::membership::{NodeInfo, Role};
pub use crate::service::{Config, Error, Service};
