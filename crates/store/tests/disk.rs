//! Disk mode: database files plus checkpoints; restart from the files and
//! a replay of the log; restore of a snapshot into files; torn checkpoints.

use std::sync::{Arc, Mutex};

use dqlite_consensus::State;
use dqlite_store::{OnFailure, Proposer, Store, StoreState};
use rusqlite::Connection;

/// Stands in for consensus: numbers entries, keeps them as the log, and
/// applies each to the store's own state.
struct Log {
    entries: Mutex<Vec<Vec<u8>>>,
    state: Mutex<StoreState>,
}

impl Log {
    fn attach(store: &Arc<Store>) -> Arc<Log> {
        let log = Arc::new(Log {
            entries: Mutex::new(Vec::new()),
            state: Mutex::new(store.state()),
        });
        store.set_proposer(log.clone());
        log
    }

    fn last_index(&self) -> u64 {
        self.entries.lock().unwrap().len() as u64
    }
}

impl Proposer for Log {
    fn propose(&self, entry: Vec<u8>, _failed: OnFailure) {
        let mut entries = self.entries.lock().unwrap();
        entries.push(entry.clone());
        let index = entries.len() as u64;
        self.state.lock().unwrap().apply(index, &entry).unwrap();
    }
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

fn fill(conn: &Connection, rows: usize) {
    for i in 0..rows {
        conn.execute("INSERT INTO t (v) VALUES (?)", [format!("{i:0200}")])
            .unwrap();
    }
}

#[test]
fn restart_from_files_and_replay_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let log = Log::attach(&store);
    let conn = store.open("d.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 50);
    let checkpointed = log.last_index();
    assert!(store.checkpoint(checkpointed).unwrap());
    fill(&conn, 50);
    let image = store.image("d.db").unwrap();
    let entries = log.entries.lock().unwrap().clone();
    drop(conn);
    drop(store);

    // "Crash": only the files and the log survive.
    let reopened = Store::disk(dir.path()).unwrap();
    let mut state = reopened.state();
    assert_eq!(state.applied_index(), checkpointed);
    for (i, e) in entries.iter().enumerate() {
        let index = i as u64 + 1;
        // Consensus replays only what the state has not applied.
        if index > state.applied_index() {
            assert!(state.apply(index, e).unwrap());
        }
    }
    assert_eq!(reopened.image("d.db").unwrap(), image);
    assert_eq!(count(&reopened.open("d.db").unwrap()), 100);
}

/// The database file of the only database in `dir`.
fn db_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .unwrap()
}

#[test]
fn a_torn_checkpoint_is_repaired_by_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let log = Log::attach(&store);
    let conn = store.open("t.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 30);
    let checkpointed = log.last_index();
    assert!(store.checkpoint(checkpointed).unwrap());
    let record = dir.path().join("checkpoint.json");
    let older_record = std::fs::read(&record).unwrap();
    fill(&conn, 30);
    let image = store.image("t.db").unwrap();
    let entries = log.entries.lock().unwrap().clone();
    // A later checkpoint wrote its sums and pages, and a crash came before
    // its record, tearing every page it wrote (power loss mid-write).
    assert!(store.checkpoint(log.last_index()).unwrap());
    drop(conn);
    drop(store);
    std::fs::write(&record, older_record).unwrap();
    let changed: std::collections::BTreeSet<u32> = entries[checkpointed as usize..]
        .iter()
        .flat_map(|e| {
            dqlite_store::entry::Entry::decode(e)
                .unwrap()
                .page_numbers()
        })
        .collect();
    let file = db_file(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    for pgno in &changed {
        let start = (*pgno as usize - 1) * 4096;
        bytes[start..start + 2048].fill(0xa5);
    }
    std::fs::write(&file, bytes).unwrap();

    let reopened = Store::disk(dir.path()).unwrap();
    let mut state = reopened.state();
    assert_eq!(state.applied_index(), checkpointed);
    for (i, e) in entries.iter().enumerate() {
        let index = i as u64 + 1;
        if index > state.applied_index() {
            state.apply(index, e).unwrap();
        }
    }
    let got = reopened.image("t.db").unwrap();
    let conn = reopened.open("t.db").unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(count(&conn), 60);
    assert_eq!(got, image);
}

#[test]
fn a_damaged_database_file_is_refused_or_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::disk(&path).unwrap();
    let log = Log::attach(&store);
    let conn = store.open("t.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 30);
    assert!(store.checkpoint(log.last_index()).unwrap());
    // Read through the store while the byte flips under it: the read
    // fails instead of returning the damaged page.
    let file = db_file(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    let reader = store.open("t.db").unwrap();
    let err = reader
        .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert!(
        err.to_string().contains("disk I/O error"),
        "unexpected error: {err}"
    );
    drop((conn, reader, store));

    let err = match Store::disk(&path) {
        Ok(_) => panic!("a damaged file opened"),
        Err(e) => e,
    };
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    match &err {
        dqlite_store::StoreError::Damaged { file: f, detail } => {
            assert_eq!(f, &file);
            assert!(
                detail.contains(&name) && detail.contains("fails its checksum"),
                "{detail}"
            );
        }
        other => panic!("not reported as damage: {other}"),
    }
    // With auto-recovery the directory is set aside, whole, and the store
    // starts empty (consensus then rebuilds it from the peers).
    let fresh = Store::disk_with(&path, true).unwrap();
    assert!(fresh.databases().is_empty());
    assert!(dir.path().join("db.corrupt").join(&name).exists());
}

#[test]
fn checkpoints_wait_for_readers_of_older_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let log = Log::attach(&store);
    let writer = store.open("r.db").unwrap();
    writer
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&writer, 5);
    // Before the first checkpoint a version reads nothing from the file,
    // so its reader does not hold checkpoints back.
    let early = store.open("r.db").unwrap();
    early.execute_batch("BEGIN").unwrap();
    assert_eq!(count(&early), 5);
    fill(&writer, 5);
    assert!(store.checkpoint(log.last_index()).unwrap());
    assert_eq!(count(&early), 5, "it still reads its snapshot");
    early.execute_batch("COMMIT").unwrap();

    let reader = store.open("r.db").unwrap();
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(count(&reader), 10);
    fill(&writer, 5);
    assert!(
        !store.checkpoint(log.last_index()).unwrap(),
        "a reader pins an older version"
    );
    assert_eq!(count(&reader), 10, "and it still reads its snapshot");
    reader.execute_batch("COMMIT").unwrap();
    assert!(store.checkpoint(log.last_index()).unwrap());
    assert_eq!(count(&reader), 15);
}

#[test]
fn a_reader_of_the_checkpointed_version_keeps_its_snapshot_across_later_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let log = Log::attach(&store);
    let writer = store.open("k.db").unwrap();
    writer
        .execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO u VALUES (1, 'old');",
        )
        .unwrap();
    fill(&writer, 5);
    // `u` goes to the file; `t` changes after, so the version the reader
    // takes holds `t`'s pages in memory and reads `u`'s from the file.
    assert!(store.checkpoint(log.last_index()).unwrap());
    fill(&writer, 5);
    let reader = store.open("k.db").unwrap();
    reader.execute_batch("BEGIN").unwrap();
    // Reads only `t`: the pages of `u` are not in its cache.
    assert_eq!(count(&reader), 10);
    // The reader holds the current version: checkpointing it is harmless.
    assert!(store.checkpoint(log.last_index()).unwrap());
    writer
        .execute("UPDATE u SET v = 'new' WHERE id = 1", [])
        .unwrap();
    // Now the file would get a page the reader's version does not hold.
    assert!(
        !store.checkpoint(log.last_index()).unwrap(),
        "a reader pins the version the first checkpoint replaced"
    );
    let v: String = reader
        .query_row("SELECT v FROM u WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        v, "old",
        "the reader sees its snapshot, not a later checkpoint"
    );
    reader.execute_batch("COMMIT").unwrap();
    assert!(store.checkpoint(log.last_index()).unwrap());
}

#[test]
fn changes_past_the_threshold_checkpoint_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let _log = Log::attach(&store);
    let conn = store.open("big.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    // 48 MiB of new pages, one transaction per MiB: past the 32 MiB
    // threshold, so at least one automatic checkpoint runs.
    for _ in 0..48 {
        conn.execute_batch("BEGIN").unwrap();
        for _ in 0..16 {
            conn.execute("INSERT INTO t (v) VALUES (randomblob(65536))", [])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    // Written in the background: wait for the record. It is one line of
    // JSON, then a line with its checksum.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let record = loop {
        let bytes = std::fs::read(dir.path().join("checkpoint.json")).unwrap_or_default();
        let json = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        if let Ok(record) = serde_json::from_slice::<serde_json::Value>(json) {
            break record;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint record");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(record["applied"].as_u64().unwrap() > 0, "{record}");
    let file_size: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "db"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(file_size > 32 << 20, "pages reached the file: {file_size}");
    assert_eq!(count(&conn), 768);
}

#[test]
fn snapshots_restore_into_files_and_survive_a_reopen() {
    let source = Store::memory().unwrap();
    let conn = source.open("s.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 40);
    let image = source.image("s.db").unwrap();
    let mut snap = Vec::new();
    source
        .state()
        .freeze()
        .unwrap()
        .write_to(&mut snap)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let mut state = store.state();
    state.restore(41, &mut snap.as_slice()).unwrap();
    assert_eq!(store.image("s.db").unwrap(), image);
    // A second restore switches to a new generation and drops the old one.
    state.restore(41, &mut snap.as_slice()).unwrap();
    drop(state);
    drop(store);
    let reopened = Store::disk(dir.path()).unwrap();
    assert_eq!(reopened.state().applied_index(), 41);
    assert_eq!(reopened.image("s.db").unwrap(), image);
    let files = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "db"))
        .count();
    assert_eq!(files, 1, "older generations are removed");
    // And the disk-mode image streams the same bytes back, but for the
    // applied index it is of (bytes 5..13; the source applied nothing
    // through consensus).
    let mut again = Vec::new();
    reopened
        .state()
        .freeze()
        .unwrap()
        .write_to(&mut again)
        .unwrap();
    assert_eq!(again[5..13], 41u64.to_le_bytes());
    assert_eq!((&again[..5], &again[13..]), (&snap[..5], &snap[13..]));
}

#[test]
fn a_frozen_snapshot_image_keeps_its_pages_while_commits_and_checkpoints_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let log = Log::attach(&store);
    let conn = store.open("f.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 40);
    // Checkpointed first: the image reads its pages from the file.
    assert!(store.checkpoint(log.last_index()).unwrap());
    let image = log.state.lock().unwrap().freeze().unwrap();
    let at_freeze = store.image("f.db").unwrap();
    conn.execute("UPDATE t SET v = 'changed'", []).unwrap();
    fill(&conn, 40);
    assert!(
        !store.checkpoint(log.last_index()).unwrap(),
        "the file must not change under a frozen image"
    );
    let mut snap = Vec::new();
    image.write_to(&mut snap).unwrap();
    assert!(store.checkpoint(log.last_index()).unwrap());

    let restored = Store::memory().unwrap();
    restored.state().restore(41, &mut snap.as_slice()).unwrap();
    assert_eq!(restored.image("f.db").unwrap(), at_freeze);
    assert_eq!(count(&restored.open("f.db").unwrap()), 40);
}

#[test]
fn a_disk_mode_snapshot_is_a_checkpoint_and_a_streamed_image_carries_its_own_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let log = Log::attach(&store);
    let conn = store.open("g.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 40);
    let at = log.last_index();
    // The snapshot's data is the files: the checkpoint makes them durable
    // at the applied index in the background, says when, and a reopen
    // finds them.
    assert!(matches!(
        log.state.lock().unwrap().checkpoint(),
        Some(Ok(true))
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while log.state.lock().unwrap().checkpointed().unwrap() < at {
        assert!(std::time::Instant::now() < deadline, "never durable");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(Store::disk(dir.path()).unwrap().state().applied_index(), at);
    // A peer is streamed a fresh image; labelled with an older snapshot
    // index, it still restores to the index it is of.
    let mut snap = Vec::new();
    let image = log.state.lock().unwrap().freeze().unwrap();
    image.write_to(&mut snap).unwrap();
    let other = tempfile::tempdir().unwrap();
    let receiver = Store::disk(other.path()).unwrap();
    let mut state = receiver.state();
    state.restore(at - 10, &mut snap.as_slice()).unwrap();
    assert_eq!(state.applied_index(), at);
    assert_eq!(receiver.image("g.db"), store.image("g.db"));
    drop(state);
    drop(receiver);
    assert_eq!(
        Store::disk(other.path()).unwrap().state().applied_index(),
        at
    );
    // A memory store keeps no files: its snapshots hold its image.
    assert!(Store::memory().unwrap().state().checkpoint().is_none());
}

#[test]
fn restores_prepared_off_the_driver_thread_never_share_files() {
    let source = Store::memory().unwrap();
    let conn = source.open("p.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 20);
    let mut first = Vec::new();
    source
        .state()
        .freeze()
        .unwrap()
        .write_to(&mut first)
        .unwrap();
    fill(&conn, 20);
    let image = source.image("p.db").unwrap();
    let mut second = Vec::new();
    source
        .state()
        .freeze()
        .unwrap()
        .write_to(&mut second)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::disk(dir.path()).unwrap();
    let mut state = store.state();
    let preparer = state.preparer().unwrap();
    // Both prepared before either is installed (a leader change can do
    // that): each has its own files.
    let a = preparer.prepare(21, &mut first.as_slice()).unwrap();
    let b = preparer.prepare(41, &mut second.as_slice()).unwrap();
    state.install(21, a).unwrap();
    state.install(41, b).unwrap();
    assert_eq!(store.image("p.db").unwrap(), image);
    // One prepared before an install that came after it is refused (the
    // core then restores from the file).
    let late = preparer.prepare(21, &mut first.as_slice()).unwrap();
    let newer = preparer.prepare(41, &mut second.as_slice()).unwrap();
    state.install(41, newer).unwrap();
    assert!(state.install(21, late).is_err());
    assert_eq!(store.image("p.db").unwrap(), image);
    drop(state);
    drop(store);
    let reopened = Store::disk(dir.path()).unwrap();
    assert_eq!(reopened.state().applied_index(), 41);
    assert_eq!(reopened.image("p.db").unwrap(), image);
    let files = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "db"))
        .count();
    assert_eq!(files, 1, "only the installed generation is left");
}

/// A disk-mode node in a cluster with a memory-mode leader receives pages
/// as patches. After a crash in a checkpoint its files hold pages newer
/// than the record, which no patch may be applied to: the replay fails,
/// applying nothing and naming the way out, instead of building on them.
#[test]
fn a_patch_of_a_page_a_crashed_checkpoint_left_newer_is_refused() {
    let leader = Store::memory().unwrap();
    let log = Log::attach(&leader);
    let conn = leader.open("t.db").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&conn, 30);
    let first = log.last_index();
    fill(&conn, 30);
    let entries = log.entries.lock().unwrap().clone();

    let dir = tempfile::tempdir().unwrap();
    let follower = Store::disk(dir.path()).unwrap();
    let mut state = follower.state();
    let apply = |state: &mut StoreState, range: std::ops::Range<usize>| {
        for i in range {
            assert!(state.apply(i as u64 + 1, &entries[i]).unwrap());
        }
    };
    apply(&mut state, 0..first as usize);
    assert!(follower.checkpoint(first).unwrap());
    let record = dir.path().join("checkpoint.json");
    let older_record = std::fs::read(&record).unwrap();
    apply(&mut state, first as usize..entries.len());
    assert_eq!(
        follower.image("t.db").unwrap(),
        leader.image("t.db").unwrap()
    );
    // The later checkpoint wrote every page; the crash came before its
    // record.
    assert!(follower.checkpoint(entries.len() as u64).unwrap());
    drop(state);
    drop(follower);
    std::fs::write(&record, older_record).unwrap();

    let reopened = Store::disk(dir.path()).unwrap();
    let mut state = reopened.state();
    assert_eq!(state.applied_index(), first);
    let failed = (first as usize..entries.len())
        .map(|i| (i as u64 + 1, state.apply(i as u64 + 1, &entries[i])))
        .find_map(|(index, r)| r.err().map(|e| (index, e)));
    let (index, err) = failed.expect("a patch of a newer page was applied");
    assert!(err.to_string().contains("checkpoint cut short"), "{err}");
    assert_eq!(state.applied_index(), index - 1, "nothing applied");
}
