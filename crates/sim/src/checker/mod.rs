//! Checkers: pure functions over what the simulation observed.
//!
//! - [`linearizability`]: is a key-value history linearizable?
//! - [`invariants`]: raft's safety properties over snapshots of the nodes.
//!
//! They know nothing about the consensus crate, so they can be tested on
//! hand-made histories and logs, including ones that must be rejected.

pub mod invariants;
pub mod linearizability;
