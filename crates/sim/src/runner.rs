//! Running seeds: one, or many in parallel, with panics turned into failures.
//!
//! A panic inside the node code (raft-rs asserts its own invariants) is a
//! finding like any other, so each seed runs under `catch_unwind` and a
//! panic becomes [`Failure::Panic`] with its message.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::cluster::{Cluster, Failure, Formation, Report};
use crate::options::{Options, Workload};
use crate::raftrs::{Broken, RaftRsNode};
use crate::service::{KvMachine, ServiceNode, Setup};
use crate::store::StoreMachine;

/// Which node implementation a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// raft-rs's `RawNode` over `MemStorage` (the reference node).
    RaftRs,
    /// The consensus crate's core, log and snapshots on the simulated disk.
    Consensus,
    /// The consensus node with the real replicated SQLite store as its
    /// state machine, under a register, bank or set workload.
    Store,
}

/// Run one seed to completion.
pub fn run_seed(seed: u64, kind: NodeKind, broken: Broken, echo_trace: bool) -> Report {
    let mut options = Options::from_seed(seed);
    options.broken = broken;
    // The canary needs leases to plant its bug in.
    options.read_lease |= broken == Broken::LongLease;
    if kind == NodeKind::Store {
        options.workload = Workload::for_seed(seed);
    }
    run_options(options, kind, echo_trace)
}

/// Run with explicit options.
pub fn run_options(options: Options, kind: NodeKind, echo_trace: bool) -> Report {
    let fallback = options.clone();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| match kind {
        NodeKind::RaftRs => {
            let broken = options.broken;
            Cluster::new(
                options.clone(),
                Formation::StaticVoters,
                echo_trace,
                move |id, voters, _clock, rng| RaftRsNode::new(id, voters, broken, rng),
            )
            .map(Cluster::run)
        }
        NodeKind::Consensus => {
            let broken = options.broken;
            let (fsync_ms_max, read_lease) = (options.fsync_ms_max, options.read_lease);
            Cluster::new(
                options.clone(),
                Formation::GrowFromFirst,
                echo_trace,
                move |id, voters, clock, rng| {
                    let setup = Setup {
                        broken,
                        fsync_ms_max,
                        clock,
                        read_lease,
                    };
                    ServiceNode::new(id, voters, KvMachine::new(broken), setup, rng)
                },
            )
            .map(Cluster::run)
        }
        NodeKind::Store => {
            let broken = options.broken;
            let (fsync_ms_max, read_lease) = (options.fsync_ms_max, options.read_lease);
            let workload = options.workload;
            // Acknowledging early is planted in the store, not the adapter.
            let adapter = match broken {
                Broken::SendBeforeFsync | Broken::LongLease => broken,
                _ => Broken::None,
            };
            Cluster::new(
                options.clone(),
                Formation::GrowFromFirst,
                echo_trace,
                move |id, voters, clock, rng| {
                    let setup = Setup {
                        broken: adapter,
                        fsync_ms_max,
                        clock,
                        read_lease,
                    };
                    ServiceNode::new(id, voters, StoreMachine::new(workload, broken), setup, rng)
                },
            )
            .map(Cluster::run)
        }
    }));
    match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(reason)) => failed(fallback, Failure::Panic(format!("setup: {reason}"))),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            failed(fallback, Failure::Panic(message))
        }
    }
}

fn failed(options: Options, failure: Failure) -> Report {
    Report {
        options,
        result: Err(failure),
        trace_hash: 0,
        events: 0,
        operations: 0,
        completed: 0,
        committed: 0,
        leader_terms: 0,
        simulated_ms: 0,
        trace_tail: Vec::new(),
    }
}

/// Run `seeds` on `jobs` threads; reports come back in seed order.
/// `on_report` is called as each seed finishes (in completion order).
pub fn run_many(
    seeds: &[u64],
    kind: NodeKind,
    broken: Broken,
    jobs: usize,
    on_report: &(dyn Fn(&Report) + Sync),
) -> Vec<Report> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Report>>> = Mutex::new(vec![None; seeds.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let report = run_seed(seed, kind, broken, false);
                on_report(&report);
                let mut slots = results.lock().unwrap_or_else(|e| e.into_inner());
                slots[i] = Some(report);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}
