//! Auto-recovery with real processes: three nodes on loopback, a follower
//! stopped, one of its files damaged (a flipped byte, found by checksum),
//! then restarted. With `--no-auto-recovery` it refuses to start and names
//! the file and the fix; by default it sets the file aside, says so,
//! catches up from its peers and, made leader, returns every acknowledged
//! row.

mod support;

use support::{cli, wait_voters};

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::{image_hash, insert_rows, totals_on};

fn wait_same_image(cluster: &Cluster, timeout: Duration) {
    let addresses = cluster.addresses();
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = addresses.iter().map(|a| image_hash(a, "rec")).collect();
        if let Some(Ok(first)) = last.first() {
            if last.iter().all(|h| h.as_ref() == Ok(first)) {
                return;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    let logs = cluster.logs();
    let tail = &logs[logs.len().saturating_sub(20_000)..];
    panic!("images differ after {timeout:?}: {last:?}\n{tail}");
}

/// The id `dqlite-rs cluster list` gives the node at `address`.
fn id_of(servers: &str, address: &str) -> String {
    let out = cli(&["cluster", "-s", servers, "list"]);
    assert!(out.success(), "{}", out.describe());
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(address))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{address} not listed:\n{}", out.stdout))
        .to_string()
}

/// The kind of file damaged.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    /// Both copies of the hard state.
    Meta,
    /// A closed log segment.
    ClosedSegment,
    /// The open log segment, with valid records after the damaged one.
    OpenSegment,
    /// The state bytes of the newest snapshot.
    SnapshotData,
    /// The header (metadata) of the newest snapshot.
    SnapshotMetadata,
    /// Disk mode: the checkpoint record.
    CheckpointRecord,
    /// Disk mode: a database file.
    DatabaseFile,
}

impl Damage {
    fn disk_mode(self) -> bool {
        matches!(self, Damage::CheckpointRecord | Damage::DatabaseFile)
    }
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!((at as usize) < bytes.len(), "{} too short", path.display());
    bytes[at as usize] ^= 0x20;
    std::fs::write(path, &bytes).unwrap();
}

/// Files of `dir` whose name satisfies `keep`, sorted.
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Damages one file of the stopped node's directory; returns it.
fn damage(node_dir: &Path, what: Damage) -> PathBuf {
    let raft = node_dir.join("raft");
    // Segment header 32 bytes, record frame 8: this is inside the first
    // record's payload.
    let first_record = 32 + 8 + 6;
    let path = match what {
        Damage::Meta => {
            let meta = raft.join("meta");
            flip(&meta, 20);
            flip(&meta, 64 + 20);
            return meta;
        }
        Damage::ClosedSegment => files(&raft.join("log"), |n| {
            n.len() == 41 && n.chars().nth(20) == Some('-') && !n.contains('.')
        })
        .into_iter()
        .next()
        .expect("a closed segment"),
        Damage::OpenSegment => files(&raft.join("log"), |n| {
            n.starts_with("open-") && !n.contains('.')
        })
        .pop()
        .expect("an open segment"),
        Damage::SnapshotData | Damage::SnapshotMetadata => files(&raft.join("snap"), |n| {
            n.starts_with("snapshot-") && !n.contains('.')
        })
        .pop()
        .expect("a snapshot"),
        Damage::CheckpointRecord => node_dir.join("db").join("checkpoint.json"),
        // The largest: the test's own database.
        Damage::DatabaseFile => files(&node_dir.join("db"), |n| n.ends_with(".db"))
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .expect("a database file"),
    };
    let at = match what {
        Damage::SnapshotMetadata => 14,
        // Inside the JSON, before the checksum line.
        Damage::CheckpointRecord => 2,
        // Inside the last page, where the rows are.
        Damage::DatabaseFile => std::fs::metadata(&path).unwrap().len() - 100,
        // The last state byte, just before the 12-byte trailer.
        Damage::SnapshotData => std::fs::metadata(&path).unwrap().len() - 13,
        _ => first_record,
    };
    flip(&path, at);
    path
}

fn recovers_from(what: Damage) {
    // Disk mode: frequent snapshots make checkpoints, so the database
    // files and their record exist.
    let args: &[&str] = if what.disk_mode() {
        &[
            "--disk-mode",
            "--snapshot-threshold",
            "8",
            "--snapshot-trailing",
            "2",
        ]
    } else {
        &[]
    };
    let mut cluster = Cluster::start(3, args);
    let servers = cluster.servers();
    wait_voters(&servers, 3, Duration::from_secs(60));
    let addresses = cluster.addresses();
    // A closed segment needs more than one segment's worth (8 MiB) of log.
    let (rows, blob) = if what == Damage::ClosedSegment {
        (80, 128 << 10)
    } else {
        (30, 100)
    };
    insert_rows(&addresses, "rec", 0, rows, blob);
    let leader = cluster.leader(Duration::from_secs(10));
    // A node that joined (it received a snapshot), and a follower.
    let victim = if leader == 1 { 2 } else { 1 };
    let victim_addr = cluster.nodes[victim].address.clone();
    wait_same_image(&cluster, Duration::from_secs(60));
    cluster.nodes[victim].stop("TERM");
    let file = damage(&cluster.nodes[victim].dir, what);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();

    // Auto-recovery off: it refuses, naming the file and the way out.
    let before = cluster.nodes[victim].read_log().len();
    cluster.nodes[victim].args.push("--no-auto-recovery".into());
    cluster.nodes[victim].spawn();
    let status = cluster.nodes[victim].wait_exit(Duration::from_secs(60));
    let log = cluster.nodes[victim].read_log()[before..].to_string();
    assert!(
        status.is_some_and(|s| !s.success()),
        "{what:?}: started anyway ({status:?}):\n{log}"
    );
    assert!(log.contains(&name), "{what:?}: file not named:\n{log}");
    assert!(
        log.contains("auto-recovery is off") && log.contains("without --no-auto-recovery"),
        "{what:?}: no fix given:\n{log}"
    );
    // The refusal changed nothing: the damaged file is still in place.
    assert!(file.exists(), "{what:?}: {} moved", file.display());

    // The others keep the cluster writable meanwhile.
    insert_rows(&addresses, "rec", rows, 5, 100);

    // Auto-recovery on (the default): it sets the file aside and says so.
    cluster.nodes[victim].args.pop();
    let before = cluster.nodes[victim].read_log().len();
    cluster.nodes[victim].start();
    let log = cluster.nodes[victim].read_log()[before..].to_string();
    assert!(
        log.contains("auto-recovery set") && log.contains(&name),
        "{what:?}: set-aside not logged:\n{log}"
    );
    let aside = if what.disk_mode() {
        cluster.nodes[victim].dir.join("db.corrupt")
    } else if what == Damage::Meta {
        file.with_extension("corrupt")
    } else {
        file.with_file_name(format!("{name}.corrupt"))
    };
    assert!(aside.exists(), "{what:?}: {} missing", aside.display());
    insert_rows(&addresses, "rec", rows + 5, 5, 100);
    let total = rows + 10;
    wait_same_image(&cluster, Duration::from_secs(90));

    // Made leader, it returns every acknowledged row. Its fence (if any)
    // lifts once it caught up; until then it refuses the transfer.
    let id = id_of(&servers, &victim_addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.leader(Duration::from_secs(10)) != victim {
        assert!(
            Instant::now() < deadline,
            "{what:?}: never became leader\n{}",
            cluster.logs()
        );
        let _ = cli(&["cluster", "-s", &servers, "transfer", &id]);
        thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let totals = loop {
        match totals_on(&victim_addr, "rec") {
            Ok(t) => break t,
            Err(e) if Instant::now() < deadline => {
                eprintln!("read on the new leader: {e}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what:?}: cannot read on the new leader: {e}"),
        }
    };
    assert_eq!(
        totals,
        (total, (0..total).sum::<i64>()),
        "{what:?}: rows lost"
    );
    let log = cluster.nodes[victim].read_log()[before..].to_string();
    if what.disk_mode() {
        // The snapshots are the database files: with those gone, the raft
        // snapshots and log are set aside too and the peers rebuild it.
        assert!(
            log.contains("rebuilt from the peers")
                && log.contains("set the raft snapshots and log aside"),
            "{what:?}:\n{log}"
        );
    }
    // Raft data that may have been acknowledged was lost: fenced until
    // caught up, then voting (it just won an election).
    assert!(
        log.contains("will not vote until it has caught up")
            && log.contains("caught up after auto-recovery: voting again"),
        "{what:?}: no fence raised and lifted:\n{log}"
    );
}

#[test]
fn a_damaged_hard_state_is_refused_or_recovered() {
    recovers_from(Damage::Meta);
}

#[test]
fn a_damaged_closed_segment_is_refused_or_recovered() {
    recovers_from(Damage::ClosedSegment);
}

#[test]
fn a_damaged_open_segment_is_refused_or_recovered() {
    recovers_from(Damage::OpenSegment);
}

#[test]
fn damaged_snapshot_data_is_refused_or_recovered() {
    recovers_from(Damage::SnapshotData);
}

#[test]
fn damaged_snapshot_metadata_is_refused_or_recovered() {
    recovers_from(Damage::SnapshotMetadata);
}

#[test]
fn a_damaged_checkpoint_record_is_refused_or_rebuilt() {
    recovers_from(Damage::CheckpointRecord);
}

#[test]
fn a_damaged_database_file_is_refused_or_rebuilt() {
    recovers_from(Damage::DatabaseFile);
}
