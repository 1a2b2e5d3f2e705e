//! Raft's safety properties, checked over snapshots of every node.
//!
//! The harness hands [`InvariantChecker::check`] a [`NodeView`] of each node
//! after every step, and [`InvariantChecker::on_apply`] every entry a state
//! machine applies. The checker remembers what it has seen (leaders per
//! term, committed entries) because the properties span time:
//!
//! - **Election safety**: at most one leader per term, ever.
//! - **Log matching**: if two logs hold an entry with the same index and
//!   term, they hold the same entries up to that index.
//! - **Leader completeness**: an entry committed while the highest term in
//!   the cluster was `t` is in the log of every leader of a term above `t`.
//!   (Using the highest term at the time we saw the commit makes the check
//!   sound without knowing the exact term the commit happened in.)
//! - **State-machine safety**: no two nodes commit or apply different entries
//!   at the same index, and a node applies indexes in increasing order.
//! - **Image identity** (state machines with an image, the SQLite store):
//!   the digest of the whole image after applying index `i` is the same on
//!   every node that stood at `i`.
//!
//! Entries are compared by `(term, digest)`; the digest is a hash of the
//! entry's type and data computed by the harness.

use std::collections::BTreeMap;

use crate::net::NodeId;

/// One log entry as the checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryView {
    /// The term the entry was created in.
    pub term: u64,
    /// A hash of the entry's type and data.
    pub digest: u64,
}

/// A snapshot of one node's raft state, borrowing its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView<'a> {
    /// The node.
    pub id: NodeId,
    /// Its current term.
    pub term: u64,
    /// Whether it believes it is the leader of `term`.
    pub is_leader: bool,
    /// Its commit index.
    pub commit: u64,
    /// Index of `entries[0]`; entries below it are compacted into a raft snapshot.
    pub first_index: u64,
    /// The log from `first_index` on, contiguous.
    pub entries: &'a [EntryView],
}

impl NodeView<'_> {
    /// The entry at `index`, if the log holds it.
    pub fn entry(&self, index: u64) -> Option<EntryView> {
        let offset = index.checked_sub(self.first_index)?;
        self.entries.get(usize::try_from(offset).ok()?).copied()
    }

    /// The last index in the log (`first_index - 1` when empty).
    pub fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }
}

/// A broken invariant, with enough context to debug it from the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Two leaders in one term.
    #[error("election safety: nodes {first} and {second} both leaders of term {term}")]
    TwoLeaders {
        /// The term.
        term: u64,
        /// The leader seen first.
        first: NodeId,
        /// The other one.
        second: NodeId,
    },
    /// Two logs agree at an index and term but differ before (or at) it.
    #[error("log matching: nodes {a} and {b} agree at index {matching} but differ at index {differing}: {entry_a:?} vs {entry_b:?}")]
    LogMismatch {
        /// One node.
        a: NodeId,
        /// The other node.
        b: NodeId,
        /// The index where both hold the same term.
        matching: u64,
        /// An index at or below it where they differ.
        differing: u64,
        /// `a`'s entry there.
        entry_a: EntryView,
        /// `b`'s entry there.
        entry_b: EntryView,
    },
    /// A leader lacks an entry committed before its term.
    #[error("leader completeness: leader {leader} of term {term} lacks entry {index} ({expected:?}) committed while the highest term was {committed_in_term}; it has {found:?}")]
    LeaderIncomplete {
        /// The leader.
        leader: NodeId,
        /// Its term.
        term: u64,
        /// The committed index.
        index: u64,
        /// The committed entry.
        expected: EntryView,
        /// What the leader holds there.
        found: Option<EntryView>,
        /// The highest term when the commit was seen.
        committed_in_term: u64,
    },
    /// Two different entries committed at one index.
    #[error("state-machine safety: index {index} committed as {first:?} and by node {node} as {second:?}")]
    CommitConflict {
        /// The index.
        index: u64,
        /// The entry committed first.
        first: EntryView,
        /// The node committing something else.
        node: NodeId,
        /// What it committed.
        second: EntryView,
    },
    /// Two different entries applied at one index.
    #[error("state-machine safety: index {index} applied with digest {first:#x} by node {first_node} and {second:#x} by node {second_node}")]
    ApplyConflict {
        /// The index.
        index: u64,
        /// The digest applied first.
        first: u64,
        /// Who applied it.
        first_node: NodeId,
        /// The other digest.
        second: u64,
        /// Who applied that.
        second_node: NodeId,
    },
    /// Two nodes hold different images after the same index.
    #[error("image identity: after index {index} node {first_node} holds image {first:#x} and node {second_node} {second:#x}")]
    ImageDivergence {
        /// The index.
        index: u64,
        /// The digest seen first.
        first: u64,
        /// Who held it.
        first_node: NodeId,
        /// The other digest.
        second: u64,
        /// Who held that.
        second_node: NodeId,
    },
    /// A node applied an index at or below one it had already applied.
    #[error("state-machine safety: node {node} applied index {index} after {previous}")]
    ApplyOutOfOrder {
        /// The node.
        node: NodeId,
        /// The index applied.
        index: u64,
        /// The last index it applied before.
        previous: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Committed {
    entry: EntryView,
    highest_term: u64,
}

/// Remembers what was observed and checks each new observation against it.
#[derive(Debug, Default)]
pub struct InvariantChecker {
    leaders: BTreeMap<u64, NodeId>,
    committed: BTreeMap<u64, Committed>,
    applied: BTreeMap<u64, (u64, NodeId)>,
    last_applied: BTreeMap<NodeId, u64>,
    /// Per node, the commit index up to which its entries were recorded.
    recorded: BTreeMap<NodeId, u64>,
    /// Per index, the first image digest seen after it and its node.
    images: BTreeMap<u64, (u64, NodeId)>,
}

impl InvariantChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Check every invariant against the current views of the live nodes.
    pub fn check(&mut self, views: &[NodeView<'_>]) -> Result<(), Violation> {
        self.check_election_safety(views)?;
        self.check_log_matching(views)?;
        self.record_commits(views)?;
        self.check_leader_completeness(views)
    }

    /// Election safety: remember each term's leader; a second one is fatal.
    pub fn check_election_safety(&mut self, views: &[NodeView<'_>]) -> Result<(), Violation> {
        for v in views.iter().filter(|v| v.is_leader) {
            let first = *self.leaders.entry(v.term).or_insert(v.id);
            if first != v.id {
                return Err(Violation::TwoLeaders {
                    term: v.term,
                    first,
                    second: v.id,
                });
            }
        }
        Ok(())
    }

    /// Log matching over every pair of logs, on the indexes both hold.
    pub fn check_log_matching(&self, views: &[NodeView<'_>]) -> Result<(), Violation> {
        for (i, a) in views.iter().enumerate() {
            for b in &views[i + 1..] {
                check_pair(a, b)?;
            }
        }
        Ok(())
    }

    /// Record every node's committed entries; two different entries
    /// committed at one index is a state-machine safety violation.
    pub fn record_commits(&mut self, views: &[NodeView<'_>]) -> Result<(), Violation> {
        let highest_term = views.iter().map(|v| v.term).max().unwrap_or(0);
        for v in views {
            let from = self
                .recorded
                .get(&v.id)
                .map_or(v.first_index, |&r| (r + 1).max(v.first_index));
            let upto = v.commit.min(v.last_index());
            for index in from..=upto {
                let Some(entry) = v.entry(index) else {
                    continue;
                };
                let known = self.committed.entry(index).or_insert(Committed {
                    entry,
                    highest_term,
                });
                if known.entry != entry {
                    return Err(Violation::CommitConflict {
                        index,
                        first: known.entry,
                        node: v.id,
                        second: entry,
                    });
                }
            }
            let mark = self.recorded.entry(v.id).or_insert(0);
            *mark = (*mark).max(upto);
        }
        Ok(())
    }

    /// Leader completeness against the commits recorded so far.
    pub fn check_leader_completeness(&self, views: &[NodeView<'_>]) -> Result<(), Violation> {
        for v in views.iter().filter(|v| v.is_leader) {
            for (&index, c) in self.committed.range(v.first_index..) {
                if c.highest_term >= v.term {
                    continue;
                }
                let found = v.entry(index);
                if found != Some(c.entry) {
                    return Err(Violation::LeaderIncomplete {
                        leader: v.id,
                        term: v.term,
                        index,
                        expected: c.entry,
                        found,
                        committed_in_term: c.highest_term,
                    });
                }
            }
        }
        Ok(())
    }

    /// A node's state machine applied the entry at `index` with `digest`.
    pub fn on_apply(&mut self, node: NodeId, index: u64, digest: u64) -> Result<(), Violation> {
        if let Some(&previous) = self.last_applied.get(&node) {
            if index <= previous {
                return Err(Violation::ApplyOutOfOrder {
                    node,
                    index,
                    previous,
                });
            }
        }
        self.last_applied.insert(node, index);
        match first_other(&mut self.applied, index, digest, node) {
            Some((first, first_node)) => Err(Violation::ApplyConflict {
                index,
                first,
                first_node,
                second: digest,
                second_node: node,
            }),
            None => Ok(()),
        }
    }

    /// Node `node`'s state machine image after index `index` has `digest`:
    /// every node must hold the same image after the same index.
    pub fn on_image(&mut self, node: NodeId, index: u64, digest: u64) -> Result<(), Violation> {
        match first_other(&mut self.images, index, digest, node) {
            Some((first, first_node)) => Err(Violation::ImageDivergence {
                index,
                first,
                first_node,
                second: digest,
                second_node: node,
            }),
            None => Ok(()),
        }
    }

    /// A node's state machine was rebuilt (restart, or a raft snapshot
    /// restored) and now stands at `applied`: it may apply from there on.
    pub fn on_reset(&mut self, node: NodeId, applied: u64) {
        self.last_applied.insert(node, applied);
    }

    /// Number of distinct committed indexes seen.
    pub fn committed_count(&self) -> usize {
        self.committed.len()
    }

    /// Number of terms that had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }
}

fn check_pair(a: &NodeView<'_>, b: &NodeView<'_>) -> Result<(), Violation> {
    let low = a.first_index.max(b.first_index);
    let high = a.last_index().min(b.last_index());
    if high < low {
        return Ok(());
    }
    // The highest index where the terms agree; everything from there down
    // (within the overlap) must be identical.
    let mut matching = None;
    for index in (low..=high).rev() {
        if let (Some(x), Some(y)) = (a.entry(index), b.entry(index)) {
            if x.term == y.term {
                matching = Some(index);
                break;
            }
        }
    }
    let Some(matching) = matching else {
        return Ok(());
    };
    for index in (low..=matching).rev() {
        if let (Some(x), Some(y)) = (a.entry(index), b.entry(index)) {
            if x != y {
                return Err(Violation::LogMismatch {
                    a: a.id,
                    b: b.id,
                    matching,
                    differing: index,
                    entry_a: x,
                    entry_b: y,
                });
            }
        }
    }
    Ok(())
}

/// Records `node`'s `digest` at `index` unless one is recorded; returns the
/// recorded one (and its node) if it differs.
fn first_other(
    seen: &mut BTreeMap<u64, (u64, NodeId)>,
    index: u64,
    digest: u64,
    node: NodeId,
) -> Option<(u64, NodeId)> {
    let first = *seen.entry(index).or_insert((digest, node));
    (first.0 != digest).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(term: u64, digest: u64) -> EntryView {
        EntryView { term, digest }
    }

    fn view(
        id: NodeId,
        term: u64,
        leader: bool,
        commit: u64,
        entries: &[(u64, u64)],
    ) -> NodeView<'static> {
        // Leaked: a few bytes per test, so views can be built inline.
        let log: Vec<EntryView> = entries.iter().map(|&(t, d)| e(t, d)).collect();
        NodeView {
            id,
            term,
            is_leader: leader,
            commit,
            first_index: 1,
            entries: Vec::leak(log),
        }
    }

    #[test]
    fn healthy_cluster_passes() {
        let mut c = InvariantChecker::new();
        let log = [(1, 10), (1, 11), (2, 12)];
        let views = vec![
            view(1, 2, true, 3, &log),
            view(2, 2, false, 2, &log),
            view(3, 2, false, 1, &log[..2]),
        ];
        assert_eq!(c.check(&views), Ok(()));
        assert_eq!(c.committed_count(), 3);
        assert_eq!(c.leader_terms(), 1);
    }

    #[test]
    fn two_leaders_in_one_term_are_caught_even_at_different_steps() {
        let mut c = InvariantChecker::new();
        c.check(&[view(1, 3, true, 0, &[])]).unwrap();
        c.check(&[view(1, 3, false, 0, &[])]).unwrap();
        let err = c.check(&[view(2, 3, true, 0, &[])]).unwrap_err();
        assert_eq!(
            err,
            Violation::TwoLeaders {
                term: 3,
                first: 1,
                second: 2
            }
        );
        // Different terms are fine.
        c.check(&[view(2, 4, true, 0, &[])]).unwrap();
    }

    #[test]
    fn log_matching_violation_is_caught() {
        let c = InvariantChecker::new();
        // Same (index 3, term 2) but index 2 differs.
        let a = view(1, 2, false, 0, &[(1, 1), (1, 2), (2, 3)]);
        let b = view(2, 2, false, 0, &[(1, 1), (1, 9), (2, 3)]);
        let err = c.check_log_matching(&[a, b]).unwrap_err();
        assert!(matches!(
            err,
            Violation::LogMismatch {
                matching: 3,
                differing: 2,
                ..
            }
        ));
    }

    #[test]
    fn same_index_and_term_with_different_data_is_a_mismatch() {
        let c = InvariantChecker::new();
        let a = view(1, 1, false, 0, &[(1, 1)]);
        let b = view(2, 1, false, 0, &[(1, 2)]);
        assert!(c.check_log_matching(&[a, b]).is_err());
    }

    #[test]
    fn divergent_uncommitted_suffixes_are_allowed() {
        let c = InvariantChecker::new();
        let a = view(1, 3, false, 1, &[(1, 1), (2, 2)]);
        let b = view(2, 3, false, 1, &[(1, 1), (3, 5)]);
        assert_eq!(c.check_log_matching(&[a, b]), Ok(()));
    }

    #[test]
    fn log_matching_respects_compaction() {
        let c = InvariantChecker::new();
        let mut a = view(1, 2, false, 0, &[(2, 7)]);
        a.first_index = 5;
        let b = view(2, 2, false, 0, &[(1, 1), (1, 2), (1, 3), (1, 4), (2, 7)]);
        assert_eq!(c.check_log_matching(&[a.clone(), b]), Ok(()));
        assert_eq!(a.last_index(), 5);
        assert_eq!(a.entry(4), None);
    }

    #[test]
    fn conflicting_commits_are_caught() {
        let mut c = InvariantChecker::new();
        c.check(&[view(1, 1, true, 2, &[(1, 1), (1, 2)])]).unwrap();
        let err = c
            .check(&[view(2, 2, true, 2, &[(1, 1), (2, 5)])])
            .unwrap_err();
        assert!(matches!(err, Violation::CommitConflict { index: 2, .. }));
    }

    #[test]
    fn leader_missing_a_committed_entry_is_caught() {
        let mut c = InvariantChecker::new();
        // Entry 2 commits while the highest term is 1.
        c.check(&[view(1, 1, true, 2, &[(1, 1), (1, 2)])]).unwrap();
        // A term-2 leader without it violates completeness.
        let err = c
            .check(&[
                view(1, 1, false, 2, &[(1, 1), (1, 2)]),
                view(2, 2, true, 1, &[(1, 1)]),
            ])
            .unwrap_err();
        assert!(matches!(
            err,
            Violation::LeaderIncomplete {
                leader: 2,
                index: 2,
                found: None,
                ..
            }
        ));
    }

    #[test]
    fn a_stale_leader_of_an_old_term_is_not_held_to_later_commits() {
        let mut c = InvariantChecker::new();
        // Node 2 commits index 2 in term 3; node 1 still thinks it leads term 2.
        let views = [
            view(1, 2, true, 1, &[(1, 1)]),
            view(2, 3, true, 2, &[(1, 1), (3, 2)]),
        ];
        assert_eq!(c.check(&views), Ok(()));
    }

    #[test]
    fn apply_conflicts_and_reordering_are_caught() {
        let mut c = InvariantChecker::new();
        c.on_apply(1, 1, 10).unwrap();
        c.on_apply(1, 2, 11).unwrap();
        c.on_apply(2, 1, 10).unwrap();
        assert!(matches!(
            c.on_apply(2, 2, 99),
            Err(Violation::ApplyConflict { index: 2, .. })
        ));
        assert!(matches!(
            c.on_apply(1, 2, 11),
            Err(Violation::ApplyOutOfOrder { .. })
        ));
        // After a restart the node replays from its raft snapshot.
        c.on_reset(1, 0);
        c.on_apply(1, 1, 10).unwrap();
    }
}
