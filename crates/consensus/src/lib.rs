#![deny(missing_docs)]
#![forbid(unsafe_code)]
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
//! - [`lease`]: the leader's read lease (reads without a round trip).
//! - [`acks`]: a follower's append acknowledgements, coalesced.
//! - [`codec`]: how entries are encoded.
//! - [`persist`]: the log writer thread (group commit) and
//!   [`persist::stage_batch`], the persistence rules shared with the simulator.
//! - [`driver`]: the thread that owns a [`core::Core`] and does its I/O.
//! - [`background`]: low-priority threads for snapshot writing and
//!   removing old snapshots.
//! - [`transport`]: HTTP under `/raft/`, per-peer queues, mutual TLS.
//! - [`service`]: the public [`Service`] (init, join, exec, wait_read, ...).
//! - [`boot`]: loading and bootstrapping a raft directory.
//! - [`offline`]: helpers over a stopped node's directory.
//!
//! The `sim-bugs` feature compiles deliberately broken behaviours
//! ([`core::CoreConfig`]'s `broken` field) for the simulator's canaries.

pub mod acks;
pub mod codec;
pub mod core;
pub mod kv;
pub mod lease;
pub mod membership;
pub mod offline;
pub mod prepare;
pub mod progress;
pub mod state;
pub mod storage;

pub use crate::prepare::{Prepare, Prepared};
pub use crate::state::{Image, State};
pub mod background;
pub mod boot;
pub mod driver;
pub mod persist;
pub mod service;
pub mod transport;

pub use crate::driver::Status;
pub use crate::membership::{NodeInfo, Role};
pub use crate::service::{Config, Error, JoinRole, Service, PROMOTE_TIMEOUT};
