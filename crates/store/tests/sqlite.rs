//! Real SQLite over the store's VFS: transactions, rollback, snapshot
//! isolation between connections, replication through a proposer, snapshot
//! and restore, and failed commits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_consensus::State;
use dqlite_store::{OnFailure, ProposeError, Proposer, Store, StoreState};
use rusqlite::{Connection, ErrorCode};

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn integrity(conn: &Connection) {
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(result, "ok");
}

/// Reopens an image with plain SQLite on a real file: what the store holds
/// is a valid database.
fn reopen_image(image: &[u8]) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.db");
    std::fs::write(&path, image).unwrap();
    let conn = Connection::open(&path).unwrap();
    (dir, conn)
}

fn sqlite_code(err: rusqlite::Error) -> i32 {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => e.extended_code,
        other => panic!("not a SQLite failure: {other:?}"),
    }
}

#[test]
fn large_transactions_survive_and_form_a_valid_image() {
    let store = Store::memory().unwrap();
    let conn = store.open("big.db").unwrap();
    // Tiny page cache so the transaction spills dirty pages mid-way.
    conn.execute_batch(
        "PRAGMA cache_size = 10;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
         BEGIN;",
    )
    .unwrap();
    for i in 0..2000 {
        conn.execute("INSERT INTO t (v) VALUES (?)", [vec![i as u8; 700]])
            .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&conn, "t"), 2000);
    integrity(&conn);
    let (_dir, copy) = reopen_image(&store.image("big.db").unwrap());
    assert_eq!(count(&copy, "t"), 2000);
    integrity(&copy);
}

#[test]
fn rollback_and_failed_statements_change_nothing() {
    let store = Store::memory().unwrap();
    let conn = store.open("r.db").unwrap();
    conn.execute_batch("PRAGMA cache_size = 10; CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let before = store.seq("r.db").unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..500 {
        conn.execute("INSERT INTO t VALUES (?, zeroblob(900))", [i])
            .unwrap();
    }
    conn.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        store.seq("r.db").unwrap(),
        before,
        "a rollback commits nothing"
    );
    assert_eq!(count(&conn, "t"), 0);
    conn.execute("INSERT INTO t VALUES (1, NULL)", []).unwrap();
    // A multi-row insert failing half-way rolls back only that statement.
    let err = conn
        .execute_batch("INSERT INTO t VALUES (2, NULL), (3, NULL), (1, NULL)")
        .unwrap_err();
    assert_eq!(
        err.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation)
    );
    assert_eq!(count(&conn, "t"), 1);
    integrity(&conn);
}

#[test]
fn readers_keep_their_snapshot_and_never_block_the_writer() {
    let store = Store::memory().unwrap();
    let writer = store.open("iso.db").unwrap();
    writer
        .execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1)")
        .unwrap();
    let reader = store.open("iso.db").unwrap();
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(count(&reader, "t"), 1);
    // The writer commits while the reader's transaction is open.
    writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
    assert_eq!(count(&writer, "t"), 2);
    assert_eq!(count(&reader, "t"), 1, "the reader still sees its snapshot");
    // Writing on top of the old snapshot would lose the other commit.
    let err = reader.execute("INSERT INTO t VALUES (3)", []).unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    reader.execute_batch("ROLLBACK").unwrap();
    assert_eq!(count(&reader, "t"), 2, "a new transaction sees the commit");
    reader.execute("INSERT INTO t VALUES (3)", []).unwrap();
    assert_eq!(count(&writer, "t"), 3);
}

#[test]
fn one_writer_at_a_time() {
    let store = Store::memory().unwrap();
    let a = store.open("w.db").unwrap();
    a.execute_batch("CREATE TABLE t (v)").unwrap();
    let b = store.open("w.db").unwrap();
    b.busy_timeout(Duration::from_millis(50)).unwrap();
    a.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
        .unwrap();
    let err = b.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    a.execute_batch("COMMIT").unwrap();
    b.execute("INSERT INTO t VALUES (2)", []).unwrap();
    assert_eq!(count(&a, "t"), 2);
}

#[test]
fn wal_mode_is_refused_and_the_store_stays_consistent() {
    let store = Store::memory().unwrap();
    let conn = store.open("j.db").unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_ne!(mode.to_lowercase(), "wal");
    // The other journal modes keep their journal in memory.
    conn.execute_batch(
        "PRAGMA journal_mode = DELETE; CREATE TABLE t (v); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    assert_eq!(count(&conn, "t"), 1);
}

#[test]
fn vacuum_shrinks_and_changes_page_size() {
    let store = Store::memory().unwrap();
    let conn = store.open("v.db").unwrap();
    conn.execute_batch(
        "CREATE TABLE t (v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO t SELECT zeroblob(4000) FROM n;",
    )
    .unwrap();
    let big = store.image("v.db").unwrap().len();
    conn.execute_batch("DELETE FROM t WHERE rowid > 10; VACUUM")
        .unwrap();
    let small = store.image("v.db").unwrap().len();
    assert!(small < big / 10, "{small} vs {big}");
    conn.execute_batch("PRAGMA page_size = 8192; VACUUM")
        .unwrap();
    let ps: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ps, 8192);
    assert_eq!(count(&conn, "t"), 10);
    integrity(&conn);
    let (_dir, copy) = reopen_image(&store.image("v.db").unwrap());
    assert_eq!(count(&copy, "t"), 10);
}

/// Stands in for consensus: applies every entry, in order, to each
/// follower's state and to the leader's own state, like committed entries.
struct Replicator {
    states: Mutex<(u64, Vec<StoreState>)>,
    fail: Mutex<Option<ProposeError>>,
    /// Set: the next proposal answers `Timeout` and is held back, then
    /// commits just before the proposal after it (a slow entry that lands
    /// under a later transaction).
    defer: Mutex<Deferral>,
    /// The size of every entry proposed.
    sizes: Mutex<Vec<usize>>,
}

#[derive(Default)]
enum Deferral {
    #[default]
    Off,
    Next,
    Held(Vec<u8>),
}

impl Replicator {
    fn new(states: Vec<StoreState>) -> Arc<Self> {
        Arc::new(Self {
            states: Mutex::new((0, states)),
            fail: Mutex::new(None),
            defer: Mutex::new(Deferral::Off),
            sizes: Mutex::new(Vec::new()),
        })
    }

    fn commit(&self, entry: &[u8]) -> bool {
        let mut guard = self.states.lock().unwrap();
        guard.0 += 1;
        let index = guard.0;
        let mut satisfied = Vec::new();
        for state in guard.1.iter_mut() {
            satisfied.push(state.apply(index, entry).unwrap());
        }
        assert!(satisfied.windows(2).all(|w| w[0] == w[1]), "nodes disagree");
        satisfied[0]
    }
}

impl Proposer for Replicator {
    fn propose(&self, entry: Vec<u8>, failed: OnFailure) {
        self.sizes.lock().unwrap().push(entry.len());
        if let Some(e) = self.fail.lock().unwrap().clone() {
            return failed(e);
        }
        let deferral = std::mem::take(&mut *self.defer.lock().unwrap());
        let held = match deferral {
            Deferral::Next => {
                *self.defer.lock().unwrap() = Deferral::Held(entry);
                return failed(ProposeError::Timeout);
            }
            Deferral::Held(held) => Some(held),
            Deferral::Off => None,
        };
        if let Some(held) = held {
            assert!(self.commit(&held), "the held entry was current");
        }
        self.commit(&entry);
    }
}

/// Two in-memory followers of `leader`, every entry applied to all three.
fn with_followers(leader: &Arc<Store>) -> ([Arc<Store>; 2], Arc<Replicator>) {
    let followers = [Store::memory().unwrap(), Store::memory().unwrap()];
    let replicator = Replicator::new(vec![
        leader.state(),
        followers[0].state(),
        followers[1].state(),
    ]);
    leader.set_proposer(replicator.clone());
    (followers, replicator)
}

/// The median size of the entries of 200 inserts of 1 KiB rows into an
/// indexed table of 4 KiB pages, replicated to two followers whose images
/// must come out identical.
fn median_insert_entry(leader: Arc<Store>) -> usize {
    let (followers, replicator) = with_followers(&leader);
    let conn = leader.open("kv.db").unwrap();
    conn.execute_batch("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)")
        .unwrap();
    for i in 0..200u32 {
        let key = format!("{:08x}", i.wrapping_mul(2_654_435_761));
        conn.execute("INSERT INTO kv VALUES (?, ?)", (key, vec![i as u8; 1024]))
            .unwrap();
    }
    let image = leader.image("kv.db").unwrap();
    for f in &followers {
        assert_eq!(f.image("kv.db").unwrap(), image);
    }
    integrity(&followers[1].open("kv.db").unwrap());
    let mut sizes = replicator.sizes.lock().unwrap().clone();
    sizes.sort_unstable();
    sizes[sizes.len() / 2]
}

#[test]
fn pages_travel_as_patches_of_the_base_in_memory_mode_and_whole_on_disk() {
    // Each insert changes three 4 KiB pages (table leaf, index leaf,
    // header) by about 1.1 KiB in all.
    let patched = median_insert_entry(Store::memory().unwrap());
    assert!(patched < 4096, "median entry {patched} bytes");
    // A disk-mode node proposes whole pages (see `disk`).
    let dir = tempfile::tempdir().unwrap();
    let whole = median_insert_entry(Store::disk(dir.path()).unwrap());
    assert!(whole >= 3 * 4096, "median entry {whole} bytes");
}

#[test]
fn replicated_images_are_identical_and_snapshots_restore() {
    let leader = Store::memory().unwrap();
    let (followers, _replicator) = with_followers(&leader);
    let conn = leader.open("app.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
        .unwrap();
    for i in 0..200 {
        conn.execute("INSERT INTO t (s) VALUES (?)", [format!("row {i} ✓")])
            .unwrap();
    }
    let image = leader.image("app.db").unwrap();
    for f in &followers {
        assert_eq!(f.image("app.db").unwrap(), image);
        assert_eq!(f.seq("app.db"), leader.seq("app.db"));
    }
    // A follower's SQLite reads the replicated pages.
    let fconn = followers[0].open("app.db").unwrap();
    assert_eq!(count(&fconn, "t"), 200);

    // Snapshot the leader's state and restore it into a fresh store.
    let mut snap = Vec::new();
    leader
        .state()
        .freeze()
        .unwrap()
        .write_to(&mut snap)
        .unwrap();
    let fresh = Store::memory().unwrap();
    let mut state = fresh.state();
    state.restore(201, &mut snap.as_slice()).unwrap();
    assert_eq!(state.applied_index(), 201);
    assert_eq!(fresh.image("app.db").unwrap(), image);
    let rconn = fresh.open("app.db").unwrap();
    assert_eq!(count(&rconn, "t"), 200);
    integrity(&rconn);

    // Garbage and truncated snapshots are errors, not panics.
    let mut bad = fresh.state();
    assert!(bad.restore(1, &mut &b"nonsense"[..]).is_err());
    assert!(bad.restore(1, &mut &snap[..snap.len() / 2]).is_err());
    assert_eq!(
        fresh.image("app.db").unwrap(),
        image,
        "a failed restore changes nothing"
    );
}

#[test]
fn failed_commits_surface_the_dqlite_codes_and_change_nothing() {
    let store = Store::memory().unwrap();
    let replicator = Replicator::new(vec![store.state()]);
    store.set_proposer(replicator.clone());
    let conn = store.open("f.db").unwrap();
    conn.execute_batch("CREATE TABLE t (v)").unwrap();
    let seq = store.seq("f.db");
    for (err, code) in [
        (ProposeError::NotLeader, 10250),
        (ProposeError::LeadershipLost, 10506),
        (ProposeError::Timeout, 10506),
        (ProposeError::DiskFull("No space left on device".into()), 13),
    ] {
        *replicator.fail.lock().unwrap() = Some(err);
        let e = conn.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
        if code == 13 {
            assert!(e.to_string().contains("database or disk is full"), "{e}");
        }
        assert_eq!(sqlite_code(e), code);
        assert_eq!(store.seq("f.db"), seq, "nothing applied");
        *replicator.fail.lock().unwrap() = None;
        assert_eq!(count(&conn, "t"), 0, "the failed row is gone");
    }
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    assert_eq!(count(&conn, "t"), 1);
    integrity(&conn);
}

/// SQLite marks a transaction's pages clean before the commit point
/// returns, and a stale entry raised the file change counter from the same
/// base as the entry that won, so a commit rejected there must make SQLite
/// drop its page cache, or the connection reads pages that never committed.
#[test]
fn a_rejected_commit_leaves_no_phantom_pages() {
    let store = Store::memory().unwrap();
    let replicator = Replicator::new(vec![store.state()]);
    store.set_proposer(replicator.clone());
    let a = store.open("p.db").unwrap();
    a.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
    let b = store.open("p.db").unwrap();
    assert_eq!(count(&b, "t"), 0, "b has the table's pages in its cache");

    // a's insert times out in flight; it commits under b's insert, which
    // was built on the version before it and is rejected.
    *replicator.defer.lock().unwrap() = Deferral::Next;
    let e = a.execute("INSERT INTO t VALUES ('slow')", []).unwrap_err();
    assert_eq!(sqlite_code(e), 10506);
    let e = b
        .execute("INSERT INTO t VALUES ('phantom')", [])
        .unwrap_err();
    assert_eq!(
        e.sqlite_error_code(),
        Some(ErrorCode::SystemIoFailure),
        "an IOERR-class code, so that SQLite drops its cache: {e}"
    );
    assert_eq!(
        sqlite_code(e),
        dqlite_store::vfs::code::IOERR_STALE,
        "told apart from other I/O errors"
    );

    let rows = |conn: &Connection| -> Vec<String> {
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(
        rows(&b),
        ["slow"],
        "b reads what committed, not its own rejected row"
    );
    assert_eq!(rows(&a), ["slow"]);
    // b's next write builds on what committed.
    b.execute("INSERT INTO t VALUES ('next')", []).unwrap();
    assert_eq!(rows(&a), ["slow", "next"]);
    integrity(&b);
}

#[test]
fn garbage_entries_are_skipped_alike() {
    let store = Store::memory().unwrap();
    let mut state = store.state();
    assert!(!state.apply(1, b"not an entry").unwrap());
    assert_eq!(state.applied_index(), 1);
}

#[test]
fn concurrent_writers_and_readers_stay_consistent() {
    let store = Store::memory().unwrap();
    store
        .open("c.db")
        .unwrap()
        .execute_batch("CREATE TABLE t (v INTEGER)")
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let conn = store.open("c.db").unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                for i in 0..100 {
                    conn.execute("INSERT INTO t VALUES (?)", [w * 1000 + i])
                        .unwrap();
                    let n = count(&conn, "t");
                    assert!(n > i, "a writer sees its own rows");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let conn = store.open("c.db").unwrap();
    assert_eq!(count(&conn, "t"), 400);
    integrity(&conn);
}
