//! The simulated network.
//!
//! The network decides the fate of each message at send time — dropped, or
//! delivered once or twice after a random delay — and whether a link is cut
//! at delivery time. Independent random delays reorder messages between the
//! same two nodes, as UDP would and as a reconnecting TCP stream can. The
//! messages themselves live in the harness's scheduler, so the network holds
//! no queue and one scheduler orders every event of a run.

use std::collections::BTreeSet;

use crate::rng::SimRng;

/// A node identifier, as raft numbers its peers.
pub type NodeId = u64;

/// Fault rates and latency of the simulated network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// Probability that a message is silently dropped.
    pub loss: f64,
    /// Probability that a delivered message is delivered a second time.
    pub duplicate: f64,
    /// Smallest one-way delay in milliseconds.
    pub delay_min_ms: u64,
    /// Largest one-way delay in milliseconds; a wide spread reorders.
    pub delay_max_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_ms: 1,
            delay_max_ms: 5,
        }
    }
}

impl NetConfig {
    /// A configuration with every rate drawn from `rng`, from a calm LAN to
    /// a lossy, jittery one.
    pub fn random(rng: &mut SimRng) -> Self {
        let loss = [0.0, 0.01, 0.05, 0.15][rng.index(4)];
        let duplicate = [0.0, 0.01, 0.05][rng.index(3)];
        let delay_min_ms = rng.between(0, 3);
        let delay_max_ms = delay_min_ms + [2, 10, 40][rng.index(3)];
        Self {
            loss,
            duplicate,
            delay_min_ms,
            delay_max_ms,
        }
    }
}

/// Counters of what happened to messages, for the run summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to [`SimNetwork::route`].
    pub sent: u64,
    /// Messages lost at send time (loss rate or a cut link).
    pub dropped: u64,
    /// Extra copies scheduled.
    pub duplicated: u64,
    /// Deliveries refused because the link was cut while in flight.
    pub cut_in_flight: u64,
}

/// The simulated network: fault rates plus the set of cut links.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    config: NetConfig,
    /// Directed links `(from, to)` that currently lose everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    stats: NetStats,
}

impl SimNetwork {
    /// A fully connected network with the given fault rates.
    pub fn new(config: NetConfig) -> Self {
        Self {
            config,
            cut: BTreeSet::new(),
            stats: NetStats::default(),
        }
    }

    /// The fault rates in force.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Replace the fault rates, e.g. to calm the network for a liveness phase.
    pub fn set_config(&mut self, config: NetConfig) {
        self.config = config;
    }

    /// Counters so far.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Decide the fate of one message from `from` to `to`: the returned
    /// delays (in ms) are when copies arrive; empty means it is lost.
    pub fn route(&mut self, rng: &mut SimRng, from: NodeId, to: NodeId) -> Vec<u64> {
        self.stats.sent += 1;
        if !self.connected(from, to) || rng.chance(self.config.loss) {
            self.stats.dropped += 1;
            return Vec::new();
        }
        let mut delays = vec![self.delay(rng)];
        if rng.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            delays.push(self.delay(rng));
        }
        delays
    }

    /// Whether a message in flight from `from` to `to` may be delivered now;
    /// counts the ones a partition cut while in flight.
    pub fn admit(&mut self, from: NodeId, to: NodeId) -> bool {
        let ok = self.connected(from, to);
        if !ok {
            self.stats.cut_in_flight += 1;
        }
        ok
    }

    /// Whether the directed link `from -> to` is up.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Cut the directed link `from -> to` (an asymmetric fault).
    pub fn cut_link(&mut self, from: NodeId, to: NodeId) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Split `nodes` into `groups`: links between groups are cut both ways;
    /// nodes absent from every group keep their links.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a {
                    for &y in b {
                        self.cut_link(x, y);
                        self.cut_link(y, x);
                    }
                }
            }
        }
    }

    /// Cut `node` off from every node in `others`, both ways.
    pub fn isolate(&mut self, node: NodeId, others: &[NodeId]) {
        for &other in others {
            self.cut_link(node, other);
            self.cut_link(other, node);
        }
    }

    /// Restore every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// True if any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    fn delay(&self, rng: &mut SimRng) -> u64 {
        rng.between(self.config.delay_min_ms, self.config.delay_max_ms)
    }
}

/// Split `nodes` into two random non-empty groups (or leave it whole if it
/// has fewer than two nodes).
pub fn random_split(rng: &mut SimRng, nodes: &[NodeId]) -> Vec<Vec<NodeId>> {
    if nodes.len() < 2 {
        return vec![nodes.to_vec()];
    }
    let mut shuffled = nodes.to_vec();
    // Fisher–Yates with our own RNG so the split is fixed by the seed.
    for i in (1..shuffled.len()).rev() {
        let j = rng.index(i + 1);
        shuffled.swap(i, j);
    }
    let cut = 1 + rng.index(shuffled.len() - 1);
    let right = shuffled.split_off(cut);
    vec![shuffled, right]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossless_network_delivers_once_within_delay_bounds() {
        let mut net = SimNetwork::new(NetConfig {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_ms: 2,
            delay_max_ms: 7,
        });
        let mut rng = SimRng::new(1);
        for _ in 0..1000 {
            let d = net.route(&mut rng, 1, 2);
            assert_eq!(d.len(), 1);
            assert!((2..=7).contains(&d[0]));
        }
        assert_eq!(net.stats().dropped, 0);
    }

    #[test]
    fn loss_and_duplication_happen_at_roughly_their_rates() {
        let mut net = SimNetwork::new(NetConfig {
            loss: 0.2,
            duplicate: 0.1,
            delay_min_ms: 0,
            delay_max_ms: 0,
        });
        let mut rng = SimRng::new(2);
        let mut copies = 0;
        for _ in 0..10_000 {
            copies += net.route(&mut rng, 1, 2).len();
        }
        let stats = net.stats().clone();
        assert!((1500..2500).contains(&stats.dropped), "{stats:?}");
        assert!((500..1100).contains(&stats.duplicated), "{stats:?}");
        assert_eq!(copies as u64, 10_000 - stats.dropped + stats.duplicated);
    }

    #[test]
    fn partition_cuts_between_groups_only() {
        let mut net = SimNetwork::new(NetConfig::default());
        net.partition(&[vec![1, 2], vec![3]]);
        assert!(net.connected(1, 2) && net.connected(2, 1));
        assert!(!net.connected(1, 3) && !net.connected(3, 2));
        let mut rng = SimRng::new(3);
        assert!(net.route(&mut rng, 3, 1).is_empty());
        assert!(!net.admit(2, 3));
        assert_eq!(net.stats().cut_in_flight, 1);
        net.heal();
        assert!(net.connected(1, 3) && !net.is_partitioned());
    }

    #[test]
    fn asymmetric_cut_is_one_way() {
        let mut net = SimNetwork::new(NetConfig::default());
        net.cut_link(1, 2);
        assert!(!net.connected(1, 2));
        assert!(net.connected(2, 1));
    }

    #[test]
    fn random_split_covers_all_nodes_in_two_nonempty_groups() {
        let mut rng = SimRng::new(4);
        for _ in 0..100 {
            let groups = random_split(&mut rng, &[1, 2, 3, 4, 5]);
            assert_eq!(groups.len(), 2);
            assert!(groups.iter().all(|g| !g.is_empty()));
            let mut all: Vec<_> = groups.concat();
            all.sort();
            assert_eq!(all, vec![1, 2, 3, 4, 5]);
        }
    }
}
