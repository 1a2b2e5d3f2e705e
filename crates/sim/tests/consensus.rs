//! Simulation tests over the real consensus core (`dqlite_consensus::core`)
//! on the simulated disk: determinism, a fault-free run, and the canaries.
//!

mod support;

use dqlite_sim::cluster::Failure;
use dqlite_sim::options::Options;
use dqlite_sim::raftrs::Broken;
use dqlite_sim::runner::{run_options, run_seed, NodeKind};

#[test]
fn a_consensus_seed_replays_to_the_same_trace_hash() {
    for seed in [3, 99] {
        let a = run_seed(seed, NodeKind::Consensus, Broken::None, false);
        let b = run_seed(seed, NodeKind::Consensus, Broken::None, false);
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.events, b.events);
        assert!(a.events > 1000, "seed {seed} did too little: {}", a.events);
    }
}

#[test]
fn a_cluster_grown_from_one_node_serves_linearizable_operations_without_faults() {
    for seed in 0..5 {
        let options = Options {
            faults: false,
            ..Options::from_seed(seed)
        };
        let report = run_options(options, NodeKind::Consensus, false);
        assert_eq!(
            report.result,
            Ok(()),
            "seed {seed}: {:?}",
            report.trace_tail
        );
        assert!(
            report.completed > 10,
            "seed {seed}: {} completed",
            report.completed
        );
        // Joining goes through raft snapshots; entries commit beyond them.
        assert!(
            report.committed > 10,
            "seed {seed}: {} committed",
            report.committed
        );
    }
}

#[test]
fn correct_consensus_nodes_pass_under_faults() {
    support::seeds_pass_under_faults(NodeKind::Consensus, 20);
}

#[test]
fn ack_before_commit_in_the_consensus_node_is_caught() {
    let caught = (0..200).find(|&seed| {
        run_seed(seed, NodeKind::Consensus, Broken::AckBeforeCommit, false)
            .result
            .is_err()
    });
    assert!(caught.is_some(), "the simulator missed ack-before-commit");
}

#[test]
fn send_before_fsync_in_the_consensus_node_is_caught() {
    let caught = (0..300).find(|&seed| {
        run_seed(seed, NodeKind::Consensus, Broken::SendBeforeFsync, false)
            .result
            .is_err()
    });
    assert!(caught.is_some(), "the simulator missed send-before-fsync");
}

#[test]
fn a_lease_that_outlives_its_leadership_is_caught() {
    // The canary's lease lasts three election timeouts, and a node that
    // stepped down in the same term still answers reads under it, while a
    // new leader commits writes. Busier clients than a seed's own make
    // such a read likely (seeds 9 and 41 of the first 400 catch it).
    let run = |seed: u64, broken: Broken| {
        let options = Options {
            clients: 6,
            operations_per_client: 80,
            read_lease: true,
            broken,
            ..Options::from_seed(seed)
        };
        run_options(options, NodeKind::Consensus, false)
    };
    let seed = (0..400)
        .find(|&seed| {
            matches!(
                run(seed, Broken::LongLease).result,
                Err(Failure::Linearizability(_))
            )
        })
        .expect("the simulator missed a stale lease");
    // The same run with the lease the core computes is linearizable.
    let report = run(seed, Broken::None);
    assert_eq!(
        report.result,
        Ok(()),
        "seed {seed}: {:?}",
        report.trace_tail
    );
}
