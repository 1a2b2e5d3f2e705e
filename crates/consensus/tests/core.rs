//! The pure core driven by hand, the way the simulator drives it: three
//! cores on real temp directories, messages routed by the test, persistence
//! done synchronously, election timeouts drawn from a seeded RNG.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite_consensus::boot;
use dqlite_consensus::core::{Action, Core, CoreConfig, Input, MemberRequest, Proposal};
use dqlite_consensus::kv::{KvCommand, KvState};
use dqlite_consensus::lease::Clock;
use dqlite_consensus::membership::{NodeInfo, Role};
use dqlite_consensus::persist::{Persister, Stats};
use dqlite_consensus::storage::{LogOptions, RealDisk};
use dqlite_consensus::State;
use raft::eraftpb::{Message, MessageType};
use rand::{Rng, SeedableRng};

struct Node {
    core: Core<KvState>,
    persister: Persister,
    kv: KvState,
    /// Persist batches handed out but not yet written.
    unwritten: Vec<dqlite_consensus::core::PersistBatch>,
    resolved: Vec<(u64, bool)>,
    reads_done: Vec<u64>,
}

fn open_node(dir: &Path, id: u64, seed: u64) -> Node {
    open_node_bounded(dir, id, seed, u64::MAX, 0)
}

fn open_node_bounded(dir: &Path, id: u64, seed: u64, log_budget: u64, applied: u64) -> Node {
    let options = LogOptions::default();
    open_node_with(dir, CoreConfig::new(id), seed, log_budget, applied, options)
}

fn open_node_with(
    dir: &Path,
    config: CoreConfig,
    seed: u64,
    log_budget: u64,
    applied: u64,
    options: LogOptions,
) -> Node {
    let disk = Arc::new(RealDisk);
    let mut opened =
        boot::open_bounded(disk, &dir.join("raft"), options, log_budget, applied).unwrap();
    if log_budget < u64::MAX {
        let kept: usize = opened.boot.entries.iter().map(|e| e.data.len()).sum();
        assert!(
            !opened.boot.dropped_terms.is_empty() && kept as u64 <= log_budget,
            "{} dropped, {kept} bytes kept",
            opened.boot.dropped_terms.len()
        );
    }
    opened.boot.entries.shrink_to_fit();
    let kv = KvState::new();
    let id = config.id;
    let mut core = Core::new(config, kv.clone(), opened.snapshots, opened.boot).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    core.set_election_timeout_rng(Box::new(move |min, max| rng.gen_range(min..max)));
    Node {
        core,
        persister: Persister::new(id, opened.log, opened.meta),
        kv,
        unwritten: Vec::new(),
        resolved: Vec::new(),
        reads_done: Vec::new(),
    }
}

struct Cluster {
    nodes: Vec<Node>,
    wire: VecDeque<Message>,
    /// When false, node i's writes are never reported durable.
    disk_works: Vec<bool>,
    /// Node i is stopped: it neither ticks nor receives.
    down: Vec<bool>,
    /// Every message sent, in order.
    sent: Vec<MessageType>,
}

impl Cluster {
    /// Three voters 1, 2, 3, bootstrapped from one initial membership.
    fn new(root: &Path) -> Self {
        Self::with_config(root, CoreConfig::new)
    }

    /// As [`Cluster::new`], each core with `config(id)`.
    fn with_config(root: &Path, config: impl Fn(u64) -> CoreConfig) -> Self {
        let members: Vec<NodeInfo> = (1..=3u64)
            .map(|id| NodeInfo {
                id,
                address: format!("n{id}"),
                role: Role::Voter,
                ..Default::default()
            })
            .collect();
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            let dir = root.join(format!("n{id}"));
            let raft_dir = dir.join("raft");
            boot::bootstrap_cluster(Arc::new(RealDisk), &raft_dir, id, &members, &KvState::new())
                .unwrap();
            let options = LogOptions::default();
            nodes.push(open_node_with(
                &dir,
                config(id),
                7 * id,
                u64::MAX,
                0,
                options,
            ));
        }
        let mut c = Cluster {
            nodes,
            wire: VecDeque::new(),
            disk_works: vec![true; 3],
            down: vec![false; 3],
            sent: Vec::new(),
        };
        c.input(0, Input::Campaign);
        c.tick_until(
            |c| c.nodes[0].core.is_leader() && c.nodes[0].core.commit_index() > 1,
            200,
        );
        c
    }

    fn input(&mut self, i: usize, input: Input) {
        let mut out = Vec::new();
        self.nodes[i].core.handle(input, &mut out);
        self.absorb(i, out);
    }

    fn absorb(&mut self, i: usize, out: Vec<Action>) {
        for a in out {
            match a {
                Action::Send(m) => {
                    self.sent.push(m.msg_type);
                    self.wire.push_back(m);
                }
                Action::Persist(b) => self.nodes[i].unwritten.push(b),
                Action::Resolve(id, r) => self.nodes[i]
                    .resolved
                    .push((id, r.map(|o| o.satisfied).unwrap_or(false))),
                Action::ReadDone(id, Ok(_)) => self.nodes[i].reads_done.push(id),
                _ => {}
            }
        }
    }

    /// One round: deliver queued messages, persist, tick. Bounded by `steps`.
    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            let mut progressed = false;
            while let Some(m) = self.wire.pop_front() {
                progressed = true;
                // Snapshots are not exercised here (no compaction).
                assert_ne!(m.get_msg_type(), MessageType::MsgSnapshot);
                let to = (m.to - 1) as usize;
                if to < self.nodes.len() && !self.down[to] {
                    self.input(to, Input::Step(m));
                }
            }
            for i in 0..self.nodes.len() {
                if self.disk_works[i] && !self.nodes[i].unwritten.is_empty() {
                    progressed = true;
                    let batches = std::mem::take(&mut self.nodes[i].unwritten);
                    self.nodes[i]
                        .persister
                        .write(&batches, &Stats::default())
                        .unwrap();
                    let n = batches.iter().map(|b| b.number).max().unwrap();
                    self.input(i, Input::Persisted(n));
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn tick_until(&mut self, mut cond: impl FnMut(&Cluster) -> bool, ticks: usize) {
        for _ in 0..ticks {
            if cond(self) {
                return;
            }
            for i in 0..self.nodes.len() {
                if !self.down[i] {
                    self.input(i, Input::Tick);
                }
            }
            self.run(1000);
        }
        assert!(cond(self), "condition not reached in {ticks} ticks");
    }
}

#[test]
fn a_commit_costs_one_append_and_one_answer_per_follower() {
    // Followers learn the commit index with the next append or heartbeat:
    // a broadcast of their own would double the messages of a write.
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    c.sent.clear();
    c.input(0, Input::Propose(1, Proposal::State(set("k", "v"))));
    c.run(1000);
    assert_eq!(c.nodes[0].resolved, vec![(1, true)]);
    let count = |t| c.sent.iter().filter(|&&s| s == t).count();
    assert_eq!(count(MessageType::MsgAppend), 2, "{:?}", c.sent);
    assert_eq!(count(MessageType::MsgAppendResponse), 2, "{:?}", c.sent);
    // The next heartbeat tells them.
    let committed = c.nodes[0].core.commit_index();
    c.tick_until(
        |c| c.nodes.iter().all(|n| n.core.applied_index() >= committed),
        CoreConfig::new(1).heartbeat_tick + 1,
    );
}

/// The open segment of the raft log under `dir`.
fn open_segment(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("raft/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("open-"))
        })
        .unwrap()
}

fn set(k: &str, v: &str) -> Vec<u8> {
    KvCommand::Set {
        key: k.into(),
        value: v.into(),
    }
    .encode()
}

#[test]
fn proposals_resolve_with_satisfied_and_replicate_identically() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    assert_eq!(c.nodes[0].core.conf_state().voters.len(), 3);
    c.input(0, Input::Propose(1, Proposal::State(set("a", "1"))));
    let cas = KvCommand::Cas {
        key: "a".into(),
        expected: None,
        value: Some("2".into()),
    };
    c.input(0, Input::Propose(2, Proposal::State(cas.encode())));
    c.run(1000);
    c.tick_until(|c| c.nodes.iter().all(|n| n.kv.get("a").is_some()), 50);
    assert!(c.nodes[0].resolved.contains(&(1, true)));
    assert!(
        c.nodes[0].resolved.contains(&(2, false)),
        "CAS on an existing key is unsatisfied"
    );
    let dumps: Vec<_> = c
        .nodes
        .iter()
        .map(|n| (n.kv.dump(), n.kv.applied_index()))
        .collect();
    assert!(dumps.windows(2).all(|w| w[0] == w[1]), "{dumps:?}");
    // A follower refuses proposals.
    c.input(1, Input::Propose(3, Proposal::State(set("b", "1"))));
    assert!(c.nodes[1].resolved.contains(&(3, false)));
}

/// Followers get read indexes through the leader, and rounds started at
/// the same moment on different nodes all complete: their contexts differ
/// (the leader drops a round whose context it already holds, and every
/// node numbers its rounds from 1). No tick: a dropped round would never
/// resolve.
#[test]
fn reads_on_every_node_at_once_all_complete_without_a_tick() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    c.input(0, Input::Propose(1, Proposal::State(set("k", "v"))));
    c.run(1000);
    let committed = c.nodes[0].core.commit_index();
    for i in 0..3 {
        let mut out = Vec::new();
        c.nodes[i]
            .core
            .handle_input(Input::Read(100 + i as u64), &mut out);
        c.nodes[i].core.process_ready(&mut out);
        c.absorb(i, out);
    }
    c.run(1000);
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].reads_done,
            vec![100 + i as u64],
            "node {} read",
            i + 1
        );
        assert!(c.nodes[i].core.applied_index() >= committed);
    }
}

#[test]
fn concurrent_reads_share_one_read_index_round() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    let before = c.nodes[0].core.read_rounds();
    let mut out = Vec::new();
    for id in 0..10 {
        c.nodes[0].core.handle_input(Input::Read(id), &mut out);
    }
    c.nodes[0].core.process_ready(&mut out);
    c.absorb(0, out);
    c.run(1000);
    assert_eq!(
        c.nodes[0].core.read_rounds(),
        before + 1,
        "ten callers, one round"
    );
    let mut done = c.nodes[0].reads_done.clone();
    done.sort();
    assert_eq!(done, (0..10).collect::<Vec<_>>());
}

#[test]
fn nothing_commits_until_a_majority_has_fsynced() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    // Followers' disks stall: their append responses must not leave.
    c.disk_works = vec![true, false, false];
    c.input(0, Input::Propose(9, Proposal::State(set("durable", "yes"))));
    c.run(1000);
    for _ in 0..3 {
        for i in 0..3 {
            c.input(i, Input::Tick);
        }
        c.run(1000);
    }
    assert!(
        c.nodes[0].resolved.iter().all(|(id, _)| *id != 9),
        "acknowledged before a majority fsync"
    );
    assert_eq!(c.nodes[0].kv.get("durable"), None);
    // One follower's disk recovers: now a majority (leader + it) is durable.
    c.disk_works[1] = true;
    c.run(1000);
    c.tick_until(|c| c.nodes[0].resolved.contains(&(9, true)), 20);
}

#[test]
fn seeded_election_timeouts_are_reproducible() {
    let draw = |seed: u64| {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("n");
        boot::bootstrap(
            Arc::new(RealDisk),
            &dir.join("raft"),
            1,
            "n1",
            &KvState::new(),
        )
        .unwrap();
        let n = open_node(&dir, 1, seed);
        n.core.raw().raft.randomized_election_timeout()
    };
    assert_eq!(draw(42), draw(42));
    let spread: std::collections::BTreeSet<_> = (0..20).map(draw).collect();
    assert!(spread.len() > 1, "the seed drives the timeout");
}

#[test]
fn a_committed_membership_change_survives_a_restart() {
    // Regression (simulator seed 62): the configuration is rebuilt from the
    // snapshot plus entries up to the durable commit index, so a committed
    // conf change must make its commit index durable.
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    let demoted = NodeInfo {
        id: 3,
        address: "n3".into(),
        role: Role::StandBy,
        ..Default::default()
    };
    c.input(
        0,
        Input::Propose(50, Proposal::Member(MemberRequest::Set(demoted))),
    );
    c.run(1000);
    c.tick_until(|c| c.nodes[0].resolved.iter().any(|(id, _)| *id == 50), 20);
    assert_eq!(c.nodes[0].core.conf_state().learners, vec![3]);
    // Crash every node (nothing but what was fsynced survives) and reopen.
    for (i, id) in (1..=3u64).enumerate() {
        let dir = root.path().join(format!("n{id}"));
        let reopened = open_node(&dir, id, 99);
        c.nodes[i] = reopened;
        let mut out = Vec::new();
        c.nodes[i].core.process_ready(&mut out);
        assert_eq!(
            c.nodes[i].core.conf_state().learners,
            vec![3],
            "node {id} forgot the committed membership change"
        );
    }
    // And the leader refuses to remove itself (raft-rs would panic).
    let me = NodeInfo {
        id: 1,
        address: "n1".into(),
        role: Role::Spare,
        ..Default::default()
    };
    let mut c = Cluster::new(&root.path().join("again"));
    c.input(
        0,
        Input::Propose(60, Proposal::Member(MemberRequest::Set(me))),
    );
    assert!(c.nodes[0].resolved.contains(&(60, false)));
}

#[test]
fn a_leader_that_commits_its_own_removal_steps_down_and_stays_until_not_needed() {
    // Regression (simulator seeds 3325, 1699, 7057, 7698): `Remove(2)` is
    // proposed by leader 1 and reaches node 2 only; node 1 goes down, node 2
    // is elected and commits its own removal. raft-rs keeps such a leader and
    // panics on its next append response; the core steps down instead. The
    // node must not report `Removed` (after which it may be stopped) while
    // node 3, which has not learnt the commit, still needs its vote.
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    c.run(1000);
    c.input(
        0,
        Input::Propose(70, Proposal::Member(MemberRequest::Remove(2))),
    );
    c.wire
        .retain(|m| m.to == 2 && m.get_msg_type() == MessageType::MsgAppend);
    while let Some(m) = c.wire.pop_front() {
        c.input(1, Input::Step(m));
    }
    // Node 1 is gone: drop everything to and from it from now on.
    c.disk_works[0] = false;
    c.nodes[0].unwritten.clear();
    let mut removal_seen = false;
    for _ in 0..400 {
        for i in 1..3 {
            c.input(i, Input::Tick);
        }
        for _ in 0..1000 {
            c.wire.retain(|m| m.to != 1 && m.from != 1);
            let Some(m) = c.wire.pop_front() else { break };
            // Node 3 never hears of the commit from node 2 directly.
            let kind = m.get_msg_type();
            if m.from == 2
                && !c.nodes[1].core.conf_state().voters.contains(&2)
                && matches!(kind, MessageType::MsgAppend | MessageType::MsgTimeoutNow)
            {
                continue;
            }
            let to = (m.to - 1) as usize;
            c.input(to, Input::Step(m));
            for i in 1..3 {
                if !c.nodes[i].unwritten.is_empty() {
                    let batches = std::mem::take(&mut c.nodes[i].unwritten);
                    c.nodes[i]
                        .persister
                        .write(&batches, &Stats::default())
                        .unwrap();
                    let n = batches.iter().map(|b| b.number).max().unwrap();
                    c.input(i, Input::Persisted(n));
                }
            }
        }
        let n2 = &c.nodes[1].core;
        if !n2.conf_state().voters.contains(&2) {
            removal_seen = true;
            assert!(!n2.is_leader(), "a removed leader must step down");
            if !c.nodes[2].core.conf_state().voters.is_empty()
                && c.nodes[2].core.conf_state().voters.contains(&2)
            {
                assert!(
                    !n2.is_removed(),
                    "node 2 reported its removal while node 3 still counts it"
                );
            }
        }
        if removal_seen && c.nodes[2].core.is_leader() && c.nodes[1].core.is_removed() {
            break;
        }
    }
    assert!(removal_seen, "node 2 never applied its removal");
    assert!(c.nodes[2].core.is_leader(), "node 3 never took over");
    assert_eq!(c.nodes[2].core.conf_state().voters, vec![1, 3]);
    assert!(c.nodes[1].core.is_removed());
}

#[test]
fn a_restart_applies_entries_left_on_disk_at_load() {
    // Start-up keeps only a bounded tail of payloads in memory; the rest of
    // the committed log is read back from the segment files to be applied.
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    let value = "v".repeat(1000);
    for i in 0..200u64 {
        c.input(
            0,
            Input::Propose(100 + i, Proposal::State(set(&format!("k{i}"), &value))),
        );
        c.run(1000);
    }
    c.tick_until(|c| c.nodes.iter().all(|n| n.kv.get("k199").is_some()), 50);
    let expected = c.nodes[0].kv.dump();
    assert_eq!(expected.len(), 200);
    // The meta file's commit index is only made durable with membership
    // changes; a State on disk would tell how far it applied (committed).
    let applied = c.nodes[0].kv.applied_index();
    assert!(applied > 200);
    // Every node restarts with an empty State and 20 KB of log in memory:
    // everything after the snapshot (index 1) is applied again, most of it
    // read back from the segment files.
    for (i, id) in (1..=3u64).enumerate() {
        let dir = root.path().join(format!("n{id}"));
        c.nodes[i] = open_node_bounded(&dir, id, 99 + 13 * id, 20_000, applied);
        let mut out = Vec::new();
        c.nodes[i].core.process_ready(&mut out);
        assert_eq!(c.nodes[i].core.failure(), None);
    }
    // Once a leader makes the commit index known again, every node applies
    // the whole log, most of it read back from the segment files.
    c.tick_until(
        |c| c.nodes.iter().all(|n| n.kv.dump().len() == expected.len()),
        200,
    );
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(n.core.failure(), None);
        assert!(n.kv.dump() == expected, "node {} differs", i + 1);
    }
    // And the cluster goes on.
    c.input(0, Input::Propose(999, Proposal::State(set("after", "1"))));
    c.tick_until(|c| c.nodes.iter().all(|n| n.kv.get("after").is_some()), 100);
}

#[test]
fn slow_follower_disks_do_not_depose_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    let term = c.nodes[0].core.term();
    // A large append takes the followers' disks a long time: meanwhile
    // they still answer heartbeats, so the leader keeps its quorum.
    c.disk_works = vec![true, false, false];
    c.input(0, Input::Propose(5, Proposal::State(set("big", "entry"))));
    c.run(1000);
    for _ in 0..60 {
        for i in 0..3 {
            c.input(i, Input::Tick);
        }
        c.run(1000);
    }
    assert!(
        c.nodes[0].core.is_leader(),
        "the leader stepped down while its followers fsynced"
    );
    assert_eq!(c.nodes[0].core.term(), term);
    assert!(c.nodes[0].resolved.iter().all(|(id, _)| *id != 5));
    c.disk_works = vec![true; 3];
    c.run(1000);
    c.tick_until(|c| c.nodes[0].resolved.contains(&(5, true)), 20);
    assert_eq!(c.nodes[0].core.term(), term);
}

#[test]
fn a_node_that_lost_acknowledged_entries_does_not_vote_until_it_caught_up() {
    // The classic danger: node 2 acknowledges an entry that commits with
    // nodes 1 and 2, loses it to corruption, and votes for node 3, which
    // never had it. Without the fence node 3 wins and the write is lost.
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    c.down[2] = true;
    c.input(0, Input::Propose(1, Proposal::State(set("a", "1"))));
    c.tick_until(|c| c.nodes[0].resolved.contains(&(1, true)), 100);
    assert!(c.nodes[2].kv.get("a").is_none());

    // Stop node 2 and damage the first record of its open segment: valid
    // records follow, so this is corruption, not a torn tail.
    let dir2 = root.path().join("n2");
    let open = open_segment(&dir2);
    let mut bytes = std::fs::read(&open).unwrap();
    bytes[32 + 8 + 3] ^= 0x40;
    std::fs::write(&open, &bytes).unwrap();
    let recover = LogOptions {
        auto_recovery: true,
        ..LogOptions::default()
    };
    c.nodes[1] = open_node_with(&dir2, CoreConfig::new(2), 5, u64::MAX, 0, recover);
    let fence = c.nodes[1].core.fence().expect("node 2 is fenced");
    assert!(fence >= c.nodes[0].core.commit_index(), "fence {fence}");
    assert!(dir2.join("raft/fence").exists());

    // Node 1 stops; nodes 2 and 3 are up. Node 2 refuses its vote, so
    // node 3, which lacks the write, never becomes leader.
    c.down = vec![true, false, false];
    c.down[2] = false;
    for _ in 0..100 {
        for i in 1..3 {
            c.input(i, Input::Tick);
        }
        c.run(1000);
        assert!(!c.nodes[2].core.is_leader(), "node 3 won without the write");
        assert!(!c.nodes[1].core.is_leader());
    }
    // A direct order to campaign is refused too.
    c.input(1, Input::Campaign);
    c.run(1000);
    assert!(!c.nodes[1].core.is_leader());

    // Node 1 returns: it wins, node 2 catches up, lifts its fence, and
    // then may lead with every acknowledged write.
    c.down = vec![false; 3];
    c.tick_until(|c| c.nodes[1].core.fence().is_none(), 300);
    assert!(!dir2.join("raft/fence").exists());
    assert_eq!(c.nodes[1].kv.get("a").as_deref(), Some("1"));
    c.input(0, Input::TransferLeader(2));
    c.tick_until(|c| c.nodes[1].core.is_leader(), 300);
    c.input(1, Input::Propose(2, Proposal::State(set("b", "2"))));
    c.tick_until(|c| c.nodes.iter().all(|n| n.kv.get("b").is_some()), 100);
    for n in &c.nodes {
        assert_eq!(n.kv.get("a").as_deref(), Some("1"));
    }
}

#[test]
fn a_follower_whose_last_acknowledged_record_reads_as_torn_catches_up() {
    // A flipped byte in the last record of the open segment looks like a
    // torn write: the record is dropped at start, though the follower had
    // acknowledged it. The leader still believes it holds it and must be
    // told, or it would never send it again.
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(root.path());
    for i in 0..5u64 {
        c.input(
            0,
            Input::Propose(i, Proposal::State(set(&format!("k{i}"), "v"))),
        );
        c.run(1000);
    }
    c.tick_until(|c| c.nodes.iter().all(|n| n.kv.get("k4").is_some()), 100);
    let last = c.nodes[1].core.last_index();
    c.down[1] = true;
    let dir2 = root.path().join("n2");
    let open = open_segment(&dir2);
    let mut bytes = std::fs::read(&open).unwrap();
    // The last record ends where the zero frame after it begins.
    let end = bytes.windows(8).rposition(|w| w != [0u8; 8]).unwrap() + 8;
    bytes[end - 2] ^= 0x01;
    std::fs::write(&open, &bytes).unwrap();
    c.nodes[1] = open_node(&dir2, 2, 11);
    assert_eq!(
        c.nodes[1].core.last_index(),
        last - 1,
        "read as a torn tail"
    );
    c.down[1] = false;
    c.tick_until(|c| c.nodes[1].core.last_index() >= last, 100);
    c.input(0, Input::Propose(9, Proposal::State(set("after", "1"))));
    c.tick_until(|c| c.nodes[1].kv.get("after").is_some(), 100);
}

/// A clock the test moves by hand: (the clock, its milliseconds).
fn manual_clock() -> (Clock, Arc<AtomicU64>) {
    let base = Instant::now();
    let ms = Arc::new(AtomicU64::new(0));
    let read = ms.clone();
    let clock = Clock::from_fn(move || base + Duration::from_millis(read.load(Ordering::SeqCst)));
    (clock, ms)
}

/// Three cores with 100 ms read leases on a hand-moved clock, once the
/// leader took its lease (by itself, with a round of no callers): the
/// cluster, the clock and its milliseconds.
fn leased_cluster(root: &Path) -> (Cluster, Clock, Arc<AtomicU64>) {
    let (clock, ms) = manual_clock();
    let mut c = Cluster::with_config(root, leased(&clock));
    c.tick_until(|c| c.nodes[0].core.lease_until().is_some(), 20);
    (c, clock, ms)
}

/// Cores with 100 ms read leases on `clock`.
fn leased(clock: &Clock) -> impl Fn(u64) -> CoreConfig + '_ {
    move |id| CoreConfig {
        read_lease: Some(Duration::from_millis(100)),
        clock: clock.clone(),
        ..CoreConfig::new(id)
    }
}

#[test]
fn a_leased_leader_answers_reads_alone_until_its_lease_ends() {
    let root = tempfile::tempdir().unwrap();
    let (mut c, _clock, ms) = leased_cluster(root.path());
    // The followers are cut off: no round can complete now.
    c.down[1] = true;
    c.down[2] = true;
    c.input(0, Input::Read(1));
    c.run(1000);
    assert_eq!(
        c.nodes[0].reads_done,
        vec![1],
        "a read under a lease needs no round"
    );
    // The lease runs from the start of the round that granted it.
    ms.store(100, Ordering::SeqCst);
    c.input(0, Input::Read(2));
    c.run(1000);
    assert_eq!(
        c.nodes[0].reads_done,
        vec![1],
        "a read after the lease waits for a quorum"
    );
    c.down[1] = false;
    c.tick_until(|c| c.nodes[0].reads_done.contains(&2), 40);
    assert!(
        c.nodes[0].core.lease_until().is_some(),
        "the round renewed it"
    );
}

#[test]
fn a_leader_that_hands_over_gives_up_its_lease_for_the_term() {
    let root = tempfile::tempdir().unwrap();
    let (mut c, _clock, _ms) = leased_cluster(root.path());
    c.down[2] = true;
    // The target's forced campaign would win past any follower's lease.
    c.input(0, Input::TransferLeader(3));
    assert_eq!(c.nodes[0].core.lease_until(), None);
    c.down[1] = true;
    c.input(0, Input::Read(1));
    c.run(1000);
    assert!(
        c.nodes[0].reads_done.is_empty(),
        "read without a round after a handover"
    );
    // Rounds complete again, but grant no lease in this term.
    c.down[1] = false;
    c.tick_until(|c| c.nodes[0].reads_done.contains(&1), 40);
    assert!(c.nodes[0].core.is_leader());
    assert_eq!(c.nodes[0].core.lease_until(), None);
}

#[test]
fn a_restarted_node_with_leases_votes_for_no_one_during_its_first_election_timeout() {
    let root = tempfile::tempdir().unwrap();
    let (mut c, clock, _ms) = leased_cluster(root.path());
    c.down[2] = true;
    let options = LogOptions::default();
    let dir = root.path().join("n3");
    c.nodes[2] = open_node_with(&dir, leased(&clock)(3), 5, u64::MAX, 0, options);
    let term = c.nodes[2].core.term();
    let candidate = c.nodes[1].core.raw();
    let vote = Message {
        msg_type: MessageType::MsgRequestVote,
        from: 2,
        to: 3,
        term: term + 1,
        log_term: candidate.raft.raft_log.last_term(),
        index: candidate.raft.raft_log.last_index(),
        ..Default::default()
    };
    // Before it stopped it may have promised the leader not to vote for
    // an election timeout; it forgot whom it followed, so it waits that
    // long again.
    c.input(2, Input::Step(vote.clone()));
    assert_eq!(c.nodes[2].core.term(), term, "voted right after a restart");
    for _ in 0..CoreConfig::new(3).election_tick {
        c.input(2, Input::Tick);
    }
    c.input(2, Input::Step(vote));
    assert_eq!(c.nodes[2].core.term(), term + 1);
    assert_eq!(c.nodes[2].core.raw().raft.vote, 2);
}

#[test]
fn a_leased_leader_answers_a_followers_read_index_without_a_round() {
    let root = tempfile::tempdir().unwrap();
    let (mut c, _clock, ms) = leased_cluster(root.path());
    let stats = Arc::new(Stats::default());
    c.nodes[0].core.set_stats(stats.clone());
    c.input(0, Input::Propose(1, Proposal::State(set("k", "v"))));
    c.run(1000);
    let committed = c.nodes[0].core.commit_index();
    // Node 2's request reaches the leader, which answers it at once.
    c.input(1, Input::Read(7));
    c.run(1000);
    assert_eq!(c.nodes[1].reads_done, vec![7]);
    assert!(c.nodes[1].core.applied_index() >= committed);
    assert_eq!(stats.lease_reads.get(), 1, "answered under the lease");
    // Past the lease the same request takes a round.
    ms.store(100, Ordering::SeqCst);
    c.input(1, Input::Read(8));
    c.run(1000);
    assert_eq!(c.nodes[1].reads_done, vec![7, 8]);
    assert_eq!(stats.lease_reads.get(), 1, "a round, not the lease");
}
