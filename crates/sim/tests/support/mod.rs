//! What the simulator's test files share.

use dqlite_sim::raftrs::Broken;
use dqlite_sim::runner::{run_seed, NodeKind};

/// Runs seeds `0..seeds` of correct `kind` nodes under faults: each must
/// pass and complete at least one operation.
pub fn seeds_pass_under_faults(kind: NodeKind, seeds: u64) {
    for seed in 0..seeds {
        let report = run_seed(seed, kind, Broken::None, false);
        assert_eq!(
            report.result,
            Ok(()),
            "seed {seed}: {:?}",
            report.trace_tail
        );
        assert!(report.completed > 0, "seed {seed} completed no operation");
    }
}
