//! Simulation tests over the real replicated SQLite store (`dqlite_store`:
//! VFS, speculative chain, `StoreState`) on the consensus core, the
//! simulated disk and network: determinism, a clean run under faults, and
//! the store's canaries (real code paths of the store crate switched to
//! deliberate bugs), each caught within a bounded number of seeds.

mod support;

use dqlite_sim::options::{Options, Workload};
use dqlite_sim::raftrs::Broken;
use dqlite_sim::runner::{run_options, run_seed, NodeKind};

/// The first seed below `limit` whose run fails with `broken` planted.
fn first_caught(broken: Broken, limit: u64) -> Option<u64> {
    (0..limit).find(|&seed| {
        run_seed(seed, NodeKind::Store, broken, false)
            .result
            .is_err()
    })
}

#[test]
fn every_workload_replays_to_the_same_trace_hash() {
    // One seed of each workload.
    for (seed, workload) in [
        (4, Workload::Register),
        (5, Workload::Bank),
        (13, Workload::Set),
    ] {
        assert_eq!(Workload::for_seed(seed), workload, "seed {seed}");
        let a = run_seed(seed, NodeKind::Store, Broken::None, false);
        let b = run_seed(seed, NodeKind::Store, Broken::None, false);
        assert_eq!(a.result, Ok(()), "seed {seed}: {:?}", a.trace_tail);
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.events, b.events);
        assert!(
            a.completed > 5,
            "seed {seed} did too little: {}",
            a.completed
        );
    }
}

#[test]
fn a_store_cluster_grown_from_one_node_serves_every_workload_without_faults() {
    for workload in [Workload::Register, Workload::Bank, Workload::Set] {
        let options = Options {
            faults: false,
            workload,
            ..Options::from_seed(1)
        };
        let report = run_options(options, NodeKind::Store, false);
        assert_eq!(
            report.result,
            Ok(()),
            "{workload:?}: {:?}",
            report.trace_tail
        );
        assert!(
            report.completed > 10,
            "{workload:?}: {} completed",
            report.completed
        );
        // Joining goes through raft snapshots of the store.
        assert!(
            report.committed > 10,
            "{workload:?}: {} committed",
            report.committed
        );
    }
}

#[test]
fn correct_store_nodes_pass_under_faults() {
    support::seeds_pass_under_faults(NodeKind::Store, 12);
}

/// A ticket resolved when its entry is proposed, not applied (first
/// caught at seed 3 today).
#[test]
fn a_commit_acknowledged_before_it_commits_is_caught() {
    assert!(
        first_caught(Broken::AckBeforeCommit, 100).is_some(),
        "the simulator missed ack-before-commit in the store"
    );
}

/// An entry applied twice on the node that built it (caught at seed 0).
#[test]
fn an_entry_applied_twice_is_caught() {
    assert!(
        first_caught(Broken::ApplyTwice, 20).is_some(),
        "the simulator missed an entry applied twice"
    );
}

/// Lost updates through a skipped base check (first caught at seed 4).
#[test]
fn a_skipped_base_check_is_caught() {
    assert!(
        first_caught(Broken::SkipBaseCheck, 100).is_some(),
        "the simulator missed a skipped base check"
    );
}

/// Regression: a leader elected alone sent its appends of the new term
/// before that term was durable; it lost the term in a crash, voted again
/// in it, and two leaders of term 5 followed (consensus core, held since in
/// `process_one_ready`). Fails without the fix.
#[test]
fn a_leader_crashing_before_its_term_is_durable_does_not_vote_again_in_it() {
    let report = run_seed(6070, NodeKind::Store, Broken::None, false);
    assert_eq!(report.result, Ok(()), "{:?}", report.trace_tail);
}

/// Seed 6795 (with read leases, whose restarted nodes hold their votes for
/// an election timeout): a removed node's grace ran out, counted from when
/// it applied its removal, while the only other voter kept crashing; that
/// voter had the removal in its log but not known committed, so it needed
/// the removed node's vote and ack to go on. The grace now starts again
/// whenever a node that still counts it asks it for anything
/// (`Core::still_needed`). Fails without it (liveness).
#[test]
fn a_removed_node_stays_while_a_voter_still_asks_for_it() {
    let report = run_seed(6795, NodeKind::Store, Broken::None, false);
    assert_eq!(report.result, Ok(()), "{:?}", report.trace_tail);
}
