//! Run options, all derived from the seed.
//!
//! A seed fixes the options and the options plus the seed fix the run; the
//! options are printed before a replay so a reader knows what world the
//! seed describes (cluster size, network quality, fault rates).

use crate::net::NetConfig;
use crate::raftrs::Broken;
use crate::rng::SimRng;

/// Everything that shapes one simulated run.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The seed everything comes from.
    pub seed: u64,
    /// Number of raft nodes (all voters at start).
    pub nodes: usize,
    /// Network fault rates during the faulty phase.
    pub net: NetConfig,
    /// Number of concurrent clients.
    pub clients: usize,
    /// Operations each client issues.
    pub operations_per_client: usize,
    /// Number of distinct keys clients touch (few keys, more contention).
    pub keys: u64,
    /// Length of the faulty phase in simulated milliseconds.
    pub fault_phase_ms: u64,
    /// Whether crashes, partitions and membership changes are injected.
    pub faults: bool,
    /// Mean time between injected faults.
    pub fault_interval_ms: u64,
    /// How long a client waits for an answer before calling it unknown.
    pub client_timeout_ms: u64,
    /// Largest simulated fsync latency in milliseconds (the window in which
    /// a crash loses written but unsynced data).
    pub fsync_ms_max: u64,
    /// Whether crashes tear the last unsynced write (where the node's
    /// storage runs over the simulated disk).
    pub torn_writes: bool,
    /// A deliberate bug, for canary runs; never set from a seed.
    pub broken: Broken,
    /// What the clients do (the store node varies it; the others always
    /// run the register workload).
    pub workload: Workload,
    /// Whether leaders answer reads under a lease
    /// (`dqlite_consensus::lease`) rather than with a round each.
    pub read_lease: bool,
}

/// What the clients do, and what is checked at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Reads, writes and compare-and-sets of a few keys: the history must
    /// be linearizable.
    Register,
    /// Transfers between [`BANK_ACCOUNTS`] accounts and reads of every
    /// balance: every read sums to [`BANK_TOTAL`] with no balance negative.
    Bank,
    /// Inserts of unique elements: the final read holds every acknowledged
    /// element and nothing that was never attempted (or was refused).
    Set,
}

/// Accounts of the bank workload.
pub const BANK_ACCOUNTS: u64 = 5;
/// What the accounts of the bank workload hold together (100 each).
pub const BANK_TOTAL: u64 = BANK_ACCOUNTS * 100;

impl Workload {
    /// The workload of `seed` for a node that runs all three (a stream of
    /// its own, so the other options stay what they are for other nodes).
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = SimRng::new(seed ^ 0x776f_726b_6c6f_6164);
        [Workload::Register, Workload::Bank, Workload::Set][rng.index(3)]
    }
}

impl Options {
    /// Derive the options of `seed`.
    pub fn from_seed(seed: u64) -> Self {
        // A separate stream so adding an option later does not change the
        // run's own random stream, only the options' one.
        let mut rng = SimRng::new(seed ^ 0x6f70_7469_6f6e_7321);
        let nodes = [3, 3, 5][rng.index(3)];
        Self {
            seed,
            nodes,
            net: NetConfig::random(&mut rng),
            clients: 1 + rng.index(4),
            operations_per_client: 10 + rng.index(30),
            keys: 1 + rng.between(0, 2),
            fault_phase_ms: rng.between(2_000, 8_000),
            faults: true,
            fault_interval_ms: [100, 300, 1_000][rng.index(3)],
            client_timeout_ms: [300, 1_000][rng.index(2)],
            torn_writes: rng.chance(0.5),
            fsync_ms_max: [2, 10, 30][rng.index(3)],
            broken: Broken::None,
            workload: Workload::Register,
            read_lease: rng.chance(0.5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_a_function_of_the_seed() {
        assert_eq!(Options::from_seed(5), Options::from_seed(5));
        let distinct: std::collections::BTreeSet<String> = (0..20)
            .map(|s| {
                format!(
                    "{:?}",
                    Options {
                        seed: 0,
                        ..Options::from_seed(s)
                    }
                )
            })
            .collect();
        assert!(distinct.len() > 10, "seeds should vary the options");
    }
}
