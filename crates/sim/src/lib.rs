//! Deterministic simulation of the dqlite-rs consensus service and of the
//! replicated SQLite store on top of it.
//!
//! Goal: find safety bugs in the consensus crate — the real raft loop, log,
//! raft snapshots and membership code — and in the store crate — the real
//! VFS, speculative chain and `StoreState` under SQLite — by running several
//! nodes under a hostile but reproducible world, and checking after every
//! step that raft's invariants hold (and, for the store, that every node
//! holds the same database image after every applied index) and at the end
//! that what clients saw is linearizable (register) or keeps its invariant
//! (bank totals, set contents).
//! Method: everything nondeterministic (time, message fate, disk faults,
//! client choices) is drawn from one `u64` seed, so a failing seed replays
//! exactly.
//!
//! Three node kinds (`dqlite-sim --node`): `raftrs` (raft-rs's reference
//! node), `consensus` (the consensus crate's core with a key-value state
//! machine, the default) and `store` (the same core with the real store as
//! its state machine, clients running SQL transactions on the leader). The
//! store node's canaries switch real code paths of `dqlite-store` through
//! its `sim-bugs` feature (`Store::set_broken`): a commit acknowledged
//! before it commits, an entry applied twice, a skipped base check.
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
//!   completeness, state-machine safety, image identity.
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
//! - [`options`]: everything a run varies, derived from its seed (the
//!   store node's workload too).
//! - [`cluster`]: one run: scheduler loop, clients, faults, membership,
//!   checks after every event, and at the end linearizability (register)
//!   or the bank and set checks with their final read.
//! - [`runner`]: one seed or many in parallel, panics turned into failures.
//!
//! `NEEDS.md` beside this crate lists what the simulator asks of the
//! consensus and store crates, the bugs it found there, and its figures.

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
