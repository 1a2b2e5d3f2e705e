//! Deterministic simulation of the dqlite-rs consensus service.
//!
//! Goal: find safety bugs in the consensus crate — the real raft loop, log,
//! raft snapshots and membership code — by running several nodes under a
//! hostile but reproducible world, and checking after every step that raft's
//! invariants hold and at the end that what clients saw is linearizable.
//! Method: everything nondeterministic (time, message fate, disk faults,
//! client choices) is drawn from one `u64` seed, so a failing seed replays
//! exactly.
//!
//! # Layout
//!
//! - [`rng`]: the seeded random number generator every choice comes from.
//! - [`clock`]: simulated milliseconds; time moves only by the scheduler.
//! - [`scheduler`]: the event queue ordered by time, then insertion.
//! - [`net`]: message loss, delay, duplication, reordering and partitions.
//! - [`disk`]: an in-memory file system with fsync semantics, crashes that
//!   lose unsynced data or tear the last write, `ENOSPC` and `EIO`.
//! - [`checker::linearizability`]: Wing–Gong checker for a key-value history.
//! - [`checker::invariants`]: election safety, log matching, leader
//!   completeness, state-machine safety.
//! - [`trace`]: the run's trace and its hash, to prove determinism.
//! - [`kv`]: client requests as log records, and the reference state machine.
//! - [`node`]: the [`node::SimNode`] trait the harness drives.
//! - [`raftrs`]: a reference node on raft-rs's `RawNode` + `MemStorage`,
//!   and the deliberate bugs ([`raftrs::Broken`]) canaries plant.
//! - [`simfs`]: the consensus crate's `Disk` trait over [`disk::SimDisk`].
//! - [`service`]: a node running the consensus crate's real `Core`, `Log`,
//!   `MetaFile` and `SnapshotStore` on the simulated disk, generic over its
//!   [`service::Machine`] (state machine and client handling).
//! - [`store`]: that machine as the real replicated SQLite store (VFS,
//!   speculative chain, `StoreState`) under SQL workloads.
//! - [`options`]: everything a run varies, derived from its seed.
//! - [`cluster`]: one run: scheduler loop, clients, faults, membership,
//!   checks after every event, linearizability at the end.
//! - [`runner`]: one seed or many in parallel, panics turned into failures.
//!
//! `NEEDS.md` beside this crate lists what the simulator asks of the
//! consensus crate and the bugs it found there.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod checker;
pub mod clock;
pub mod cluster;
pub mod disk;
pub mod kv;
pub mod net;
pub mod node;
pub mod options;
pub mod raftrs;
pub mod rng;
pub mod runner;
pub mod scheduler;
pub mod service;
pub mod simfs;
pub mod store;
pub mod trace;
