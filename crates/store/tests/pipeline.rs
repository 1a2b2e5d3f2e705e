//! The speculative chain under random interleavings: writers and readers on
//! several connections while entries commit, fail, come back later (an
//! entry whose outcome was unknown commits under later ones) or are lost
//! with leadership — checked against a serial model built from what was
//! really applied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_consensus::State;
use dqlite_store::entry::Entry;
use dqlite_store::{
    pending, OnFailure, Pending, ProposeError, Proposer, SettleError, Store, StoreState,
};
use proptest::prelude::*;
use rusqlite::Connection;

struct Queued {
    bytes: Vec<u8>,
    id: u64,
    failed: Option<OnFailure>,
}

/// Stands in for consensus: keeps entries until the test applies or fails
/// them.
#[derive(Default)]
struct Queue {
    entries: Mutex<VecDeque<Queued>>,
    proposed: Mutex<Vec<u64>>,
}

impl Proposer for Queue {
    fn propose(&self, bytes: Vec<u8>, failed: OnFailure) {
        let id = Entry::decode(&bytes).unwrap().head.id;
        self.proposed.lock().unwrap().push(id);
        self.entries.lock().unwrap().push_back(Queued {
            bytes,
            id,
            failed: Some(failed),
        });
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, i64),
    Read(usize),
    /// A read of the committed version (`dqlite_store::read_committed`).
    ReadCommitted(usize),
    Apply,
    /// The oldest entry's outcome becomes unknown; it may still commit.
    Fail {
        keep: bool,
    },
    LoseLeadership,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0i64..4).prop_map(|(c, k)| Op::Write(c, k)),
        3 => (0usize..3).prop_map(Op::Read),
        2 => (0usize..3).prop_map(Op::ReadCommitted),
        4 => Just(Op::Apply),
        1 => any::<bool>().prop_map(|keep| Op::Fail { keep }),
        1 => Just(Op::LoseLeadership),
    ]
}

type Rows = BTreeMap<i64, i64>;

fn rows(conn: &Connection) -> Rows {
    let mut stmt = conn.prepare("SELECT k, v FROM kv ORDER BY k").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

struct Cluster {
    leader: Arc<Store>,
    followers: Vec<Arc<Store>>,
    states: Vec<StoreState>,
    index: u64,
    queue: Arc<Queue>,
}

impl Cluster {
    fn new() -> Self {
        let leader = Store::memory().unwrap();
        let followers = vec![Store::memory().unwrap(), Store::memory().unwrap()];
        let mut states = vec![leader.state()];
        states.extend(followers.iter().map(|f| f.state()));
        let queue = Arc::new(Queue::default());
        leader.set_proposer(queue.clone());
        Self {
            leader,
            followers,
            states,
            index: 0,
            queue,
        }
    }

    /// Applies the oldest queued entry on every node: its id and whether
    /// it was current.
    fn apply(&mut self) -> Option<(u64, bool)> {
        let q = self.queue.entries.lock().unwrap().pop_front()?;
        self.index += 1;
        let oks: Vec<bool> = self
            .states
            .iter_mut()
            .map(|s| s.apply(self.index, &q.bytes).unwrap())
            .collect();
        assert!(oks.windows(2).all(|w| w[0] == w[1]), "nodes disagree");
        let image = self.leader.image("p.db");
        for f in &self.followers {
            assert_eq!(f.image("p.db"), image, "images differ at {}", self.index);
        }
        Some((q.id, oks[0]))
    }
}

fn run(ops: Vec<Op>) {
    let mut cluster = Cluster::new();
    let conns: Vec<Connection> = (0..3)
        .map(|_| cluster.leader.open("p.db").unwrap())
        .collect();
    conns[0]
        .execute_batch("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER)")
        .unwrap();
    assert!(cluster.apply().unwrap().1);
    let _ = pending();

    // What committed, in order: the model's history of states.
    let mut history: Vec<Rows> = vec![Rows::new()];
    let mut applied_ok = Vec::new();
    let mut writes: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    let mut write_checks: Vec<(u64, Pending)> = Vec::new();
    let mut read_checks: Vec<(Rows, Pending)> = Vec::new();
    let mut next_value = 0i64;

    let apply = |cluster: &mut Cluster,
                 history: &mut Vec<Rows>,
                 applied_ok: &mut Vec<u64>,
                 writes: &BTreeMap<u64, (i64, i64)>| {
        if let Some((id, true)) = cluster.apply() {
            applied_ok.push(id);
            let mut state = history.last().cloned().unwrap_or_default();
            let (k, v) = writes[&id];
            state.insert(k, v);
            history.push(state);
        }
    };

    for op in ops {
        match op {
            Op::Write(c, k) => {
                next_value += 1;
                let before = cluster.queue.proposed.lock().unwrap().len();
                conns[c]
                    .execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, next_value))
                    .unwrap_or_else(|e| panic!("write on connection {c}: {e}"));
                let p = pending();
                let proposed = cluster.queue.proposed.lock().unwrap();
                assert_eq!(proposed.len(), before + 1, "one entry per write");
                let id = proposed[before];
                writes.insert(id, (k, next_value));
                write_checks.push((id, p));
            }
            Op::Read(c) => {
                let r = rows(&conns[c]);
                read_checks.push((r, pending()));
            }
            Op::ReadCommitted(c) => {
                dqlite_store::read_committed(true);
                let r = rows(&conns[c]);
                dqlite_store::read_committed(false);
                // Exactly what has committed so far, with nothing to wait for.
                assert_eq!(Some(&r), history.last(), "committed read on {c}");
                assert_eq!(pending().outcome(), Some(Ok(())));
            }
            Op::Apply => apply(&mut cluster, &mut history, &mut applied_ok, &writes),
            Op::Fail { keep } => {
                let mut q = cluster.queue.entries.lock().unwrap();
                if let Some(front) = q.front_mut() {
                    if let Some(f) = front.failed.take() {
                        f(ProposeError::Timeout);
                    }
                    if !keep {
                        q.pop_front();
                    }
                }
            }
            Op::LoseLeadership => {
                let mut q = cluster.queue.entries.lock().unwrap();
                for e in q.iter_mut() {
                    if let Some(f) = e.failed.take() {
                        f(ProposeError::LeadershipLost);
                    }
                }
            }
        }
    }
    while !cluster.queue.entries.lock().unwrap().is_empty() {
        apply(&mut cluster, &mut history, &mut applied_ok, &writes);
    }

    for (id, p) in &write_checks {
        let committed = applied_ok.contains(id);
        match p.outcome() {
            None => panic!("write {id} still in flight with an empty queue"),
            Some(Ok(())) => assert!(committed, "write {id} acknowledged but never committed"),
            Some(Err(SettleError::Stale | SettleError::NotLeader)) => {
                assert!(
                    !committed,
                    "write {id} reported not applied, but it committed"
                )
            }
            Some(Err(_)) => {} // outcome unknown: either is right
        }
    }
    for (r, p) in &read_checks {
        match p.outcome() {
            None => panic!("a read still waits with an empty queue"),
            Some(Ok(())) => assert!(
                history.contains(r),
                "a read returned {r:?}, which never committed; history {history:?}"
            ),
            Some(Err(_)) => {} // the response was an error: nothing seen
        }
    }
    // No connection keeps pages that never committed.
    let last = history.last().unwrap();
    for (c, conn) in conns.iter().enumerate() {
        assert_eq!(&rows(conn), last, "connection {c} after everything settled");
        assert_eq!(pending().wait(Duration::ZERO), Ok(()));
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
    // And each connection writes on top of what committed.
    for conn in &conns {
        next_value += 1;
        conn.execute("INSERT OR REPLACE INTO kv VALUES (100, ?)", [next_value])
            .unwrap();
        let _ = pending();
        assert_eq!(cluster.apply().map(|(_, ok)| ok), Some(true));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_chain_matches_a_serial_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

/// The scenario of the module comment by hand: a reader that sees a row in
/// flight gets nothing before it commits, and nothing at all if it fails.
#[test]
fn readers_of_speculative_rows_wait_and_fail_with_their_writer() {
    let mut cluster = Cluster::new();
    let w = cluster.leader.open("p.db").unwrap();
    let r = cluster.leader.open("p.db").unwrap();
    w.execute_batch("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER)")
        .unwrap();
    cluster.apply();
    let _ = pending();

    w.execute("INSERT INTO kv VALUES (1, 1)", []).unwrap();
    let wrote = pending();
    assert!(wrote.wrote());
    assert_eq!(
        wrote.outcome(),
        None,
        "the commit returned before replication"
    );
    w.execute("INSERT INTO kv VALUES (2, 2)", []).unwrap();
    let wrote2 = pending();
    assert_eq!(rows(&r), Rows::from([(1, 1), (2, 2)]), "the chain's head");
    let read = pending();
    assert!(!read.wrote());
    assert_eq!(read.outcome(), None, "the reader waits for the rows it saw");
    cluster.apply();
    assert_eq!(wrote.outcome(), Some(Ok(())));
    assert_eq!(read.outcome(), None, "row 2 is still in flight");

    // Leadership is lost with row 2 in flight, and it never commits.
    let lost = cluster.queue.entries.lock().unwrap().pop_front().unwrap();
    (lost.failed.unwrap())(ProposeError::LeadershipLost);
    assert_eq!(wrote2.outcome(), Some(Err(SettleError::LeadershipLost)));
    assert_eq!(read.outcome(), Some(Err(SettleError::LeadershipLost)));
    // Both connections drop the pages of row 2 from their caches.
    assert_eq!(rows(&r), Rows::from([(1, 1)]));
    assert_eq!(rows(&w), Rows::from([(1, 1)]));
    assert_eq!(pending().outcome(), Some(Ok(())));
}

#[test]
fn a_committed_read_neither_sees_nor_waits_for_entries_in_flight() {
    let mut cluster = Cluster::new();
    let w = cluster.leader.open("c.db").unwrap();
    let r = cluster.leader.open("c.db").unwrap();
    w.execute_batch("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER)")
        .unwrap();
    w.execute("INSERT INTO kv VALUES (1, 1)", []).unwrap();
    cluster.apply();
    cluster.apply();
    let _ = pending();
    w.execute("INSERT INTO kv VALUES (2, 2)", []).unwrap();
    let wrote = pending();
    let committed = |conn: &Connection| {
        dqlite_store::read_committed(true);
        let seen = rows(conn);
        dqlite_store::read_committed(false);
        seen
    };
    assert_eq!(committed(&r), Rows::from([(1, 1)]));
    assert_eq!(pending().outcome(), Some(Ok(())), "nothing to wait for");
    // Without it the reader sees the head, and waits for it.
    assert_eq!(rows(&r), Rows::from([(1, 1), (2, 2)]));
    assert_eq!(pending().outcome(), None);
    // Back and forth between versions, SQLite's cache follows.
    assert_eq!(committed(&r), Rows::from([(1, 1)]));
    let _ = pending();
    // The writer reads committed state and still builds on the head.
    assert_eq!(committed(&w), Rows::from([(1, 1)]));
    w.execute("INSERT INTO kv VALUES (3, 3)", []).unwrap();
    let _ = pending();
    cluster.apply();
    assert_eq!(wrote.outcome(), Some(Ok(())));
    assert_eq!(committed(&r), Rows::from([(1, 1), (2, 2)]));
    cluster.apply();
    assert_eq!(committed(&r), Rows::from([(1, 1), (2, 2), (3, 3)]));
    assert_eq!(rows(&w), Rows::from([(1, 1), (2, 2), (3, 3)]));
    for f in &cluster.followers {
        assert_eq!(
            f.image("c.db").unwrap(),
            cluster.leader.image("c.db").unwrap()
        );
    }
}
