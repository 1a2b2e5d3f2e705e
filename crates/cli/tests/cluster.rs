//! Replicated clusters of real `dqlite-rs node` processes on 127.0.0.1:
//! formation (one bootstraps, two join), leader discovery and NOT_LEADER
//! from followers, Debian's `dqlite` shell on a follower's address, the
//! same database image on every node, SIGKILL of the leader, restart and
//! catch-up, catch-up by snapshot, and the offline recovery procedure with
//! `dqlite-rs recover`.

mod support;

use support::cli;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, Proc};
use support::{
    client_config, image_hash, metric, probe_leader, run_with_timeout, runtime, send_signal, Output,
};

const SHELL_TIMEOUT: Duration = Duration::from_secs(60);

fn dqlite_shell() -> PathBuf {
    let path = PathBuf::from("/usr/bin/dqlite");
    assert!(
        path.exists(),
        "Debian's dqlite shell is missing: apt-get install -y go-dqlite (this test never skips)"
    );
    path
}

/// Runs one statement with Debian's shell against `servers`.
fn shell(servers: &str, db: &str, sql: &str) -> Output {
    let mut cmd = Command::new(dqlite_shell());
    cmd.args(["-s", servers, db, sql]);
    run_with_timeout(cmd, None, SHELL_TIMEOUT)
}

/// A connection to database `name` on the node at `address` (no leader
/// discovery: the tests pick the node).
async fn open_on(address: &str, name: &str) -> dqlite_client::Database {
    let client = dqlite_client::Client::connect(address, &client_config(Duration::from_secs(10)))
        .await
        .unwrap();
    client.open(name).await.unwrap()
}

/// Waits until every address holds the same image of `db`.
fn wait_same_image(addresses: &[String], db: &str, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = addresses.iter().map(|a| image_hash(a, db)).collect();
        if let Some(Ok(first)) = last.first() {
            if last.iter().all(|h| h.as_ref() == Ok(first)) {
                return *first;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("images of {db} differ after {timeout:?}: {last:?}");
}

/// Members as `dqlite-rs cluster list` prints them.
fn members(servers: &str) -> Vec<(u64, String, String)> {
    let out = cli(&["cluster", "-s", servers, "list"]);
    assert!(out.success(), "{}", out.describe());
    out.stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

fn wait_voters(servers: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let m = members(servers);
        if m.len() == n && m.iter().all(|(_, _, r)| r == "voter") {
            return;
        }
        assert!(Instant::now() < deadline, "not {n} voters in time: {m:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_nodes_replicate_redirect_and_survive_the_leader() {
    replicate_redirect_and_survive_the_leader(&[]);
}

/// Disk mode passes the same replication test as memory mode.
#[test]
fn three_nodes_in_disk_mode_replicate_redirect_and_survive_the_leader() {
    replicate_redirect_and_survive_the_leader(&["--disk-mode"]);
}

fn replicate_redirect_and_survive_the_leader(mode: &[&str]) {
    let mut cluster = Cluster::start(3, mode);
    let servers = cluster.servers();
    wait_voters(&servers, 3, Duration::from_secs(30));

    let leader = cluster.leader(Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    let leader_addr = cluster.nodes[leader].address.clone();
    let follower_addr = cluster.nodes[follower].address.clone();

    // A follower names the leader: clients are redirected there.
    let (_, named) = probe_leader(&follower_addr, Duration::from_secs(5)).unwrap();
    assert_eq!(named, leader_addr);

    // SQL sent to a follower directly gets SQLITE_IOERR_NOT_LEADER.
    let code = runtime().block_on(async {
        let client =
            dqlite_client::Client::connect(&follower_addr, &client_config(Duration::from_secs(10)))
                .await
                .unwrap();
        match client.open("direct").await {
            Err(e) => e.code(),
            Ok(mut db) => db
                .exec("CREATE TABLE x (a)", ())
                .await
                .err()
                .and_then(|e| e.code()),
        }
    });
    assert_eq!(code, Some(10250));

    // Debian's shell connected to the follower's address writes through
    // the leader.
    let out = shell(
        &follower_addr,
        "app",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
    );
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    let out = shell(
        &follower_addr,
        "app",
        "INSERT INTO t (v) VALUES ('one'), ('two')",
    );
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    let out = shell(&follower_addr, "app", ".cluster");
    assert_eq!(
        out.stdout.matches("|voter").count(),
        3,
        "{}",
        out.describe()
    );

    // The same image everywhere.
    wait_same_image(&cluster.addresses(), "app", Duration::from_secs(20));

    // SIGKILL the leader: a survivor takes over and writes succeed again
    // within a few election timeouts (each 100-200 ms here).
    cluster.nodes[leader].stop("KILL");
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.nodes[i].address.clone())
        .collect();
    let killed_at = Instant::now();
    let new_leader = cluster.leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    let out = shell(
        &survivors.join(","),
        "app",
        "INSERT INTO t (v) VALUES ('three')",
    );
    let recovered = killed_at.elapsed();
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    assert!(
        recovered < Duration::from_secs(10),
        "writes resumed after {recovered:?}"
    );
    eprintln!("writes resumed {recovered:?} after the leader was killed");
    wait_same_image(&survivors, "app", Duration::from_secs(20));

    // The killed node restarts and catches up.
    cluster.nodes[leader].start();
    wait_same_image(&cluster.addresses(), "app", Duration::from_secs(30));
    let out = shell(
        &cluster.nodes[leader].address,
        "app",
        "SELECT count(*) FROM t",
    );
    assert!(out.stdout.contains('3'), "{}", out.describe());
}

#[test]
fn a_node_whose_log_was_compacted_catches_up_by_snapshot() {
    catch_up_by_snapshot(&[]);
}

#[test]
fn a_disk_mode_node_whose_log_was_compacted_catches_up_by_snapshot() {
    catch_up_by_snapshot(&["--disk-mode"]);
}

/// Three nodes started with `args`, one follower then killed (the one
/// after the leader's successor): the cluster, that node's index, the
/// length of its log so far (lines after it are the test's) and the
/// addresses of the two still running.
fn with_a_follower_stopped(args: &[&str]) -> (Cluster, usize, usize, Vec<String>) {
    let mut cluster = Cluster::start(3, args);
    wait_voters(&cluster.servers(), 3, Duration::from_secs(30));
    let leader = cluster.leader(Duration::from_secs(10));
    let lagging = (leader + 2) % 3;
    let lagging_addr = cluster.nodes[lagging].address.clone();
    let before = cluster.nodes[lagging].read_log().len();
    cluster.nodes[lagging].stop("KILL");
    let live = cluster
        .addresses()
        .into_iter()
        .filter(|a| *a != lagging_addr)
        .collect();
    (cluster, lagging, before, live)
}

fn catch_up_by_snapshot(mode: &[&str]) {
    let mut args = vec!["--snapshot-threshold", "8", "--snapshot-trailing", "2"];
    args.extend_from_slice(mode);
    let (mut cluster, lagging, before, live) = with_a_follower_stopped(&args);
    let servers = live.join(",");
    let out = shell(&servers, "snap", "CREATE TABLE t (v)");
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    for i in 0..40 {
        let out = shell(&servers, "snap", &format!("INSERT INTO t VALUES ({i})"));
        assert!(
            out.success() && !out.stdout.contains("Error"),
            "{}",
            out.describe()
        );
    }
    cluster.nodes[lagging].start();
    wait_same_image(&cluster.addresses(), "snap", Duration::from_secs(30));
    let log = cluster.nodes[lagging].read_log();
    assert!(
        log[before..].contains("installing snapshot"),
        "the lagging node did not install a snapshot:\n{}",
        &log[before..]
    );
    // Receiving and installing log their size and their end.
    let lines: Vec<&str> = log[before..].lines().collect();
    for what in ["receiving snapshot", "installing snapshot"] {
        let has = |tail: &str| lines.iter().any(|l| l.contains(what) && l.contains(tail));
        assert!(
            has(" bytes") && has(": done, "),
            "{what}:\n{}",
            &log[before..]
        );
    }
    // So does sending, on whichever node led.
    let sent = wait_for(
        "a node logs a sent snapshot",
        Duration::from_secs(10),
        || {
            cluster.nodes.iter().any(|n| {
                n.read_log()
                    .lines()
                    .any(|l| l.contains("sending snapshot") && l.contains(": done, "))
            })
        },
    );
    assert!(sent, "{}", cluster.logs());
    if mode.contains(&"--disk-mode") {
        // The snapshot went into database files, not memory.
        let db_dir = cluster.nodes[lagging].dir.join("db");
        let files: Vec<_> = std::fs::read_dir(&db_dir)
            .unwrap_or_else(|e| panic!("{}: {e}", db_dir.display()))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(files.iter().any(|f| f.ends_with(".db")), "{files:?}");
        assert!(files.iter().any(|f| f == "checkpoint.json"), "{files:?}");
    }
}

/// Bytes allocated on disk for the files directly in `dir` (as `du`).
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Disk mode: a snapshot is the checkpointed database files plus a small
/// metadata file, so a node holds its data once on disk; a lagging node
/// is streamed an image frozen at the leader when the send starts, ends
/// with the same database, and keeps only metadata after installing it;
/// a restart of every node brings back the same data.
#[test]
fn disk_mode_snapshots_are_the_database_files_and_stream_to_a_lagging_node() {
    let args = [
        "--disk-mode",
        "--snapshot-threshold",
        "8",
        "--snapshot-trailing",
        "2",
    ];
    let (mut cluster, lagging, before, live) = with_a_follower_stopped(&args);
    // 48 transactions of 1 MiB: several snapshots, the log compacted past
    // the stopped node.
    let rows = 48;
    support::insert_rows(&live, "big", 0, rows, 1 << 20);
    // Writes go on while it catches up, so the leader keeps taking
    // snapshots and compacting its log; the entries after the snapshot
    // index it sent must stay until the node has replicated past the
    // image, or the node needs a second image.
    let written = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (live, written, stop) = (live.clone(), written.clone(), stop.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0;
            let mut attempts = 0;
            while !stop.load(Ordering::Relaxed)
                && attempts < 3000
                && started.elapsed().as_secs() < 120
            {
                attempts += 1;
                // Load only: a write that meets a leader change is not
                // what this test checks (every node ends identical).
                if let Err(e) = support::try_insert_rows(&live, "big", 1000 + attempts, 1, 100) {
                    eprintln!("background write: {e}");
                    continue;
                }
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
        })
    };
    cluster.nodes[lagging].start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cluster.nodes[lagging].read_log()[before..]
        .contains("installed snapshot from the leader")
    {
        assert!(Instant::now() < deadline, "no snapshot installed");
        thread::sleep(Duration::from_millis(50));
    }
    let at_install = written.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while written.load(Ordering::Relaxed) < at_install + 30 {
        assert!(Instant::now() < deadline, "writes stalled");
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    // Its snapshot file is metadata now, so its own snapshots come after
    // `--snapshot-threshold` entries again, not after an image's worth of
    // log (which would let its log grow by the database's size).
    let lagging_address = cluster.nodes[lagging].address.clone();
    assert!(
        wait_for("a snapshot of its own", Duration::from_secs(60), || {
            snapshots_taken(&lagging_address) >= 1
        }),
        "the lagging node took no snapshot after installing one"
    );
    let hash = wait_same_image(&cluster.addresses(), "big", Duration::from_secs(120));
    let log = cluster.nodes[lagging].read_log();
    let images = log[before..]
        .lines()
        .filter(|l| l.contains("receiving snapshot") && l.contains(": done"))
        .count();
    assert_eq!(images, 1, "one image should do:\n{}", &log[before..]);
    assert!(
        log[before..].contains("installing snapshot"),
        "the lagging node did not install a snapshot:\n{}",
        &log[before..]
    );
    assert!(
        log[before..].contains("prepared off the driver thread"),
        "the snapshot was not rebuilt off the driver thread:\n{}",
        &log[before..]
    );
    // The node that led when the follower was stopped (it is the next one).
    let leader = (lagging + 1) % 3;
    let size = runtime().block_on(async {
        let mut c = dqlite_client::Client::connect(
            &cluster.nodes[leader].address,
            &client_config(Duration::from_secs(30)),
        )
        .await
        .expect("connect");
        let files = c.dump("big").await.expect("dump");
        files.first().map_or(0, |f| f.data.len() as u64)
    });
    assert!(size >= (rows as u64) << 20, "database of {size} bytes");
    // Every node: the snapshots are metadata, the database is held once.
    for node in &cluster.nodes {
        let snap = allocated(&node.dir.join("raft").join("snap"));
        let db = allocated(&node.dir.join("db"));
        let log = allocated(&node.dir.join("raft").join("log"));
        eprintln!(
            "{}: database {size} bytes; db/ {db}, raft/snap {snap}, raft/log {log} bytes on disk",
            node.address
        );
        assert!(
            snap <= 64 << 10,
            "{}: snapshots hold {snap} bytes",
            node.address
        );
        assert!(
            db <= size + size / 5,
            "{}: db/ holds {db} bytes for a {size}-byte database",
            node.address
        );
    }
    // A restart of every node brings back the same database.
    for node in cluster.nodes.iter_mut() {
        node.stop("TERM");
    }
    for node in cluster.nodes.iter_mut() {
        node.spawn();
    }
    for node in cluster.nodes.iter_mut() {
        node.wait_ready(Duration::from_secs(60));
    }
    assert_eq!(
        wait_same_image(&cluster.addresses(), "big", Duration::from_secs(120)),
        hash
    );
    support::insert_rows(&cluster.addresses(), "big", rows, 1, 100);
}

/// The node's `dqlite_raft_snapshots_total{kind="taken"}` (0 if it cannot
/// be read).
fn snapshots_taken(address: &str) -> u64 {
    metric(address, "dqlite_raft_snapshots_total{kind=\"taken\"}")
}

#[test]
fn recovery_procedure_with_the_cli() {
    let mut cluster = Cluster::start(3, &[]);
    let servers = cluster.servers();
    wait_voters(&servers, 3, Duration::from_secs(30));
    let out = shell(&servers, "rec", "CREATE TABLE t (v)");
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    let out = shell(&servers, "rec", "INSERT INTO t VALUES (42)");
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    wait_same_image(&cluster.addresses(), "rec", Duration::from_secs(20));

    // Stop every node, then read each one's last entry.
    for n in &mut cluster.nodes {
        n.stop("TERM");
    }
    let mut last = Vec::new();
    for n in &cluster.nodes {
        let dir = n.dir.to_str().unwrap();
        let out = cli(&["recover", "last-entry", "--dir", dir]);
        assert!(out.success(), "{}", out.describe());
        let f: Vec<u64> = out
            .stdout
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        last.push((f[0], f[1]));
    }
    // Reading changed nothing.
    let again = cli(&[
        "recover",
        "last-entry",
        "--dir",
        cluster.nodes[0].dir.to_str().unwrap(),
    ]);
    assert_eq!(again.stdout.trim(), format!("{} {}", last[0].0, last[0].1));

    // Reconfigure the most recent node with one other survivor as the
    // voters, copy its directory to that survivor and adopt it there,
    // restart both: they elect a leader, serve and replicate.
    let node_id = |i: usize| -> u64 {
        let text = std::fs::read_to_string(cluster.nodes[i].dir.join("node.json")).unwrap();
        text.split("\"id\":")
            .nth(1)
            .and_then(|s| s.trim().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no id in node.json: {text}"))
    };
    let best = (0..3).max_by_key(|&i| last[i]).unwrap();
    let other = (best + 1) % 3;
    let (best_id, other_id) = (node_id(best), node_id(other));
    let spec = |i: usize, id: u64| format!("{id}={}=voter", cluster.nodes[i].address);
    let out = cli(&[
        "recover",
        "reconfigure",
        "--dir",
        cluster.nodes[best].dir.to_str().unwrap(),
        "--node",
        &spec(best, best_id),
        "--node",
        &spec(other, other_id),
    ]);
    assert!(out.success(), "{}", out.describe());
    std::fs::remove_dir_all(&cluster.nodes[other].dir).unwrap();
    copy_dir(&cluster.nodes[best].dir, &cluster.nodes[other].dir);
    let out = cli(&[
        "recover",
        "adopt",
        "--dir",
        cluster.nodes[other].dir.to_str().unwrap(),
        "--id",
        &other_id.to_string(),
        "--address",
        &cluster.nodes[other].address,
    ]);
    assert!(out.success(), "{}", out.describe());

    cluster.nodes[best].spawn();
    cluster.nodes[other].spawn();
    cluster.nodes[best].wait_ready(Duration::from_secs(30));
    cluster.nodes[other].wait_ready(Duration::from_secs(30));
    let addrs = [
        cluster.nodes[best].address.clone(),
        cluster.nodes[other].address.clone(),
    ];
    let servers = addrs.join(",");
    let mut m = members(&servers);
    m.sort();
    let ids: Vec<(u64, String)> = m.iter().map(|(i, a, _)| (*i, a.clone())).collect();
    let mut want = vec![(best_id, addrs[0].clone()), (other_id, addrs[1].clone())];
    want.sort();
    assert_eq!(ids, want);
    // Both were made voters; with two members the role manager keeps only
    // the leader voting (the other replicates as a standby).
    assert!(
        m.iter().any(|(_, _, r)| r == "voter")
            && m.iter().all(|(_, _, r)| r == "voter" || r == "standby"),
        "{m:?}"
    );
    let out = shell(&servers, "rec", "INSERT INTO t VALUES (43)");
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    let out = shell(&servers, "rec", "SELECT sum(v) FROM t");
    assert!(out.stdout.contains("85"), "{}", out.describe());
    wait_same_image(&addrs, "rec", Duration::from_secs(20));
}

/// Copies a stopped node's data directory (files and folders; the lock
/// file too, which holds no lock once the node stopped).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn admin_calls_and_a_leader_flip_keeps_connections() {
    let cluster = Cluster::start(3, &[]);
    let servers = cluster.servers();
    wait_voters(&servers, 3, Duration::from_secs(30));
    let leader = cluster.leader(Duration::from_secs(10));
    let leader_addr = cluster.nodes[leader].address.clone();
    let (leader_id, _) = probe_leader(&leader_addr, Duration::from_secs(5)).unwrap();

    let rt = runtime();
    let mut db = rt.block_on(async {
        let mut db = dqlite_client::Database::connect_with(
            &[&leader_addr],
            "adm",
            &client_config(Duration::from_secs(10)),
        )
        .await
        .unwrap();
        db.exec("CREATE TABLE t (v)", ()).await.unwrap();
        db.exec("BEGIN", ()).await.unwrap();
        db.exec("INSERT INTO t VALUES (1)", ()).await.unwrap();
        db
    });

    // TRANSFER mid-transaction: another node leads; the old leader keeps
    // the connection (dqlite >= 1.18), rolls the transaction back, and
    // COMMIT fails with a leadership error instead of a closed socket.
    let out = cli(&["cluster", "-s", &servers, "transfer"]);
    assert!(out.success(), "{}", out.describe());
    let new_leader = cluster.leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    let err = rt
        .block_on(db.exec("COMMIT", ()))
        .expect_err("a deposed leader cannot commit");
    assert!(
        matches!(err.code(), Some(10506 | 10250)),
        "expected a leadership error, got {err:?}"
    );
    // The same connection answers the next statements with NOT_LEADER.
    for sql in ["INSERT INTO t VALUES (2)", "SELECT count(*) FROM t"] {
        let err = rt.block_on(db.exec(sql, ())).expect_err("not the leader");
        assert_eq!(err.code(), Some(10250), "{sql}: {err:?}");
    }

    // A client that reconnects finds the new leader, where everything
    // works and the rolled-back row never appears.
    let new_addr = cluster.nodes[new_leader].address.clone();
    rt.block_on(async {
        let mut fresh = dqlite_client::Database::connect_with(
            &[&leader_addr],
            "adm",
            &client_config(Duration::from_secs(10)),
        )
        .await
        .unwrap();
        assert_eq!(fresh.client().address(), new_addr);
        fresh.exec("INSERT INTO t VALUES (3)", ()).await.unwrap();
        let rows = fresh.query_all("SELECT v FROM t", ()).await.unwrap();
        let values: Vec<i64> = rows.iter().map(|r| r.get(0).unwrap()).collect();
        assert_eq!(values, [3]);
    });

    // Leadership back on the first node: the connection that lived
    // through both flips works again, outside any transaction.
    let id = leader_id.to_string();
    let out = cli(&["cluster", "-s", &servers, "transfer", &id]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(cluster.leader(Duration::from_secs(10)), leader);
    let deadline = Instant::now() + Duration::from_secs(10);
    let values: Vec<i64> = loop {
        match rt.block_on(db.query_all("SELECT v FROM t ORDER BY v", ())) {
            Ok(rows) => break rows.iter().map(|r| r.get(0).unwrap()).collect(),
            // The node may not have noticed it leads yet.
            Err(e) if e.code() == Some(10250) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the old connection is unusable: {e:?}"),
        }
    };
    assert_eq!(values, [3]);
    rt.block_on(db.exec("INSERT INTO t VALUES (4)", ()))
        .unwrap();
    let committed = rt.block_on(async {
        let mut other = dqlite_client::Database::connect_with(
            &[&leader_addr],
            "adm",
            &client_config(Duration::from_secs(10)),
        )
        .await
        .unwrap();
        other.query_all("SELECT count(*) FROM t", ()).await.unwrap()[0]
            .get::<i64>(0)
            .unwrap()
    });
    assert_eq!(
        committed, 2,
        "the INSERT was autocommitted, not in a stale transaction"
    );

    // Mistakes are explained: the leader cannot become the leader, and an
    // unknown id lists the ids there are.
    let all = members(&servers);
    let leads_now = cluster.leader(Duration::from_secs(10));
    let leader_id = all
        .iter()
        .find(|m| m.1 == cluster.nodes[leads_now].address)
        .map(|m| m.0)
        .expect("the leader is a member");
    let out = cli(&[
        "cluster",
        "-s",
        &servers,
        "transfer",
        &leader_id.to_string(),
    ]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("node {leader_id} is already the leader")),
        "{}",
        out.describe()
    );
    let mut ids: Vec<u64> = all.iter().map(|m| m.0).collect();
    ids.sort_unstable();
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    let unknown = format!("no node with id 7; members are {}", ids.join(", "));
    for args in [["transfer", "7"], ["assign", "7"], ["remove", "7"]] {
        let mut argv = vec!["cluster", "-s", &servers];
        argv.extend(args);
        if args[0] == "assign" {
            argv.push("standby");
        }
        let out = cli(&argv);
        assert!(!out.success(), "{}", out.describe());
        assert!(
            out.stderr.contains(&unknown),
            "{args:?}: {}",
            out.describe()
        );
    }

    // ADD as a spare, then REMOVE.
    let out = cli(&[
        "cluster",
        "-s",
        &servers,
        "add",
        "99",
        "127.0.0.1:1",
        "--role",
        "spare",
    ]);
    assert!(out.success(), "{}", out.describe());
    assert!(members(&servers).contains(&(99, "127.0.0.1:1".into(), "spare".into())));
    let out = cli(&["cluster", "-s", &servers, "remove", "99"]);
    assert!(out.success(), "{}", out.describe());
    assert!(members(&servers).iter().all(|m| m.0 != 99));

    // WEIGHT and DESCRIBE talk to the first server listed.
    let first = cluster.nodes[0].address.clone();
    let out = cli(&["cluster", "-s", &first, "weight", "7"]);
    assert!(out.success(), "{}", out.describe());
    let out = cli(&["cluster", "-s", &first, "describe"]);
    assert!(out.stdout.contains("weight: 7"), "{}", out.describe());
}

/// A 3-node cluster started with `extra` flags: it, its leader's address
/// and its followers' process ids.
fn three_nodes(extra: &[&str]) -> (Cluster, String, Vec<u32>) {
    let cluster = Cluster::start(3, extra);
    wait_voters(&cluster.servers(), 3, Duration::from_secs(30));
    let leader = cluster.leader(Duration::from_secs(10));
    let leader_addr = cluster.nodes[leader].address.clone();
    let followers = (0..3)
        .filter(|i| *i != leader)
        .filter_map(|i| cluster.nodes[i].pid())
        .collect();
    (cluster, leader_addr, followers)
}

/// A leadership error, or the connection closed by a node that stepped
/// down: either way nothing was read or written.
fn refused_by_leadership(e: &dqlite_client::Error) -> bool {
    matches!(e.code(), Some(10250 | 10506)) || e.needs_reconnect()
}

/// A write in flight when the leader loses its quorum fails with
/// SQLITE_IOERR_LEADERSHIP_LOST (outcome unknown), not a hang; a new
/// statement on the deposed leader gets SQLITE_IOERR_NOT_LEADER at once;
/// once the quorum is back the cluster serves again.
#[test]
fn a_write_in_flight_when_leadership_is_lost_gets_10506() {
    let (cluster, leader_addr, followers) = three_nodes(&[]);
    let rt = runtime();
    let mut db = rt.block_on(open_on(&leader_addr, "lost"));
    let mut other = rt.block_on(open_on(&leader_addr, "lost"));
    rt.block_on(async {
        db.exec("CREATE TABLE t (v)", ()).await.unwrap();
        db.exec("BEGIN", ()).await.unwrap();
        db.exec("INSERT INTO t VALUES (1)", ()).await.unwrap();
    });
    // Freeze both followers: the leader can append but never commit, and
    // check-quorum makes it step down.
    for pid in &followers {
        send_signal(*pid, "STOP");
    }
    let started = Instant::now();
    let commit = rt.block_on(db.exec("COMMIT", ()));
    let commit_time = started.elapsed();
    // The deposed leader keeps its clients' connections and answers them
    // NOT_LEADER; opening a database there is refused the same way.
    let refused = rt.block_on(other.exec("INSERT INTO t VALUES (2)", ()));
    let reopened = rt.block_on(async {
        let client =
            dqlite_client::Client::connect(&leader_addr, &client_config(Duration::from_secs(10)))
                .await
                .unwrap();
        client.open("lost").await.map(|_| ())
    });
    for pid in &followers {
        send_signal(*pid, "CONT");
    }
    let err = commit.expect_err("a commit without a quorum cannot succeed");
    assert_eq!(
        err.code(),
        Some(10506),
        "expected SQLITE_IOERR_LEADERSHIP_LOST, got {err:?} after {commit_time:?}"
    );
    let err = refused.expect_err("a deposed leader cannot write");
    assert_eq!(err.code(), Some(10250), "{err:?}");
    let err = reopened.expect_err("a deposed leader opens no database");
    assert_eq!(
        err.code(),
        Some(10250),
        "expected SQLITE_IOERR_NOT_LEADER, got {err:?}"
    );
    // The connection whose commit failed is still there: it answers (a
    // leadership error or, if this node leads again, the result).
    match rt.block_on(db.query_all("SELECT 1", ())) {
        Ok(_) => {}
        Err(e) => assert!(matches!(e.code(), Some(10250 | 10506)), "{e:?}"),
    }
    // The cluster serves again, through whichever node leads now.
    let servers = cluster.servers();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = shell(&servers, "lost", "INSERT INTO t VALUES (3)");
        if out.success() && !out.stdout.contains("Error") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write after the quorum returned: {}",
            out.describe()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A leader cut off from its followers must not answer anything it read:
/// a write that commits nothing (EXEC reads first and confirms leadership
/// after), a query (which also runs before its barrier and holds its rows
/// until it), and a write (which can never commit) all fail, and the
/// write's failure says the outcome is unknown. All three start at once,
/// while the leader still believes it leads, so each takes the path that
/// runs before the barrier rather than being refused up front.
#[test]
fn a_leader_cut_off_answers_no_read_and_acknowledges_no_write() {
    let (_cluster, leader_addr, followers) = three_nodes(&[]);
    let rt = runtime();
    let mut db = rt.block_on(open_on(&leader_addr, "cut"));
    let mut reader = rt.block_on(open_on(&leader_addr, "cut"));
    let mut writer = rt.block_on(open_on(&leader_addr, "cut"));
    rt.block_on(async {
        db.exec("CREATE TABLE t (v)", ()).await.unwrap();
        db.exec("INSERT INTO t VALUES (1)", ()).await.unwrap();
        // Each connection has read once, so none has anything left to set up.
        for c in [&mut reader, &mut writer] {
            c.query_all("SELECT v FROM t", ()).await.unwrap();
        }
    });
    for pid in &followers {
        send_signal(*pid, "STOP");
    }
    let (read_exec, query, write) = rt.block_on(async {
        tokio::join!(
            db.exec("UPDATE t SET v = v WHERE v = 42", ()),
            reader.query_all("SELECT v FROM t", ()),
            writer.exec("INSERT INTO t VALUES (2)", ()),
        )
    });
    for pid in &followers {
        send_signal(*pid, "CONT");
    }
    // A node that steps down closes its clients' connections: that is an
    // answer too, as long as nothing read or written comes back.
    let err = read_exec.expect_err("a read-only EXEC on a cut-off leader");
    assert!(
        refused_by_leadership(&err),
        "expected a leadership error, got {err:?}"
    );
    let err = query.expect_err("a query on a cut-off leader");
    assert!(
        refused_by_leadership(&err),
        "expected a leadership error, got {err:?}"
    );
    let err = write.expect_err("a write on a cut-off leader");
    assert!(
        refused_by_leadership(&err),
        "expected a leadership error, got {err:?}"
    );
}

/// With `--read-lease` the leader answers reads without a round (the
/// metric counts them), and once its followers stop it answers none
/// after its lease ran out: 145 ms after the last round that started
/// before they stopped. A read sent later than a second after they
/// stopped and still answered fails the test.
#[test]
fn a_leased_leader_answers_reads_alone_only_until_its_lease_runs_out() {
    let (_cluster, leader_addr, followers) = three_nodes(&["--read-lease"]);
    let rt = runtime();
    let mut db = rt.block_on(open_on(&leader_addr, "lease"));
    rt.block_on(async {
        db.exec("CREATE TABLE t (v)", ()).await.unwrap();
        db.exec("INSERT INTO t VALUES (1)", ()).await.unwrap();
        for _ in 0..50 {
            let rows = db.query_all("SELECT v FROM t", ()).await.unwrap();
            assert_eq!(rows.len(), 1);
        }
    });
    let leased = metric(&leader_addr, "dqlite_raft_lease_reads_total");
    assert!(leased > 0, "no read was answered under the lease");
    for pid in &followers {
        send_signal(*pid, "STOP");
    }
    let stopped = Instant::now();
    let outcome = rt.block_on(async {
        // Bounded: the lease ends within 145 ms and a barrier without a
        // quorum fails within seconds; reads stop 10 s after the stop.
        while stopped.elapsed() < Duration::from_secs(10) {
            let sent = Instant::now();
            match db.query_all("SELECT v FROM t", ()).await {
                Ok(_) if sent.duration_since(stopped) > Duration::from_secs(1) => {
                    return Err(format!(
                        "answered a read sent {:?} after the followers stopped",
                        sent.duration_since(stopped)
                    ));
                }
                Ok(_) => {}
                Err(e) if refused_by_leadership(&e) => return Ok(()),
                Err(e) => return Err(format!("expected a leadership error, got {e:?}")),
            }
        }
        Err("the cut-off leader kept answering reads".into())
    });
    for pid in &followers {
        send_signal(*pid, "CONT");
    }
    outcome.unwrap();
}

/// Databases are independent: while eight clients keep one database's
/// commit pipeline full, another database's writes go through in between
/// rather than after the burst (C dqlite before 1.18 queued them behind
/// it). Order, not time, is asserted: the second database's writes all
/// finish while the burst is still running.
#[test]
fn a_burst_on_one_database_does_not_stall_another() {
    let cluster = Cluster::start(3, &[]);
    wait_voters(&cluster.servers(), 3, Duration::from_secs(30));
    let leader = cluster.leader(Duration::from_secs(10));
    let leader_addr = cluster.nodes[leader].address.clone();
    let rt = runtime();
    let open = |name: &'static str| {
        let addr = leader_addr.clone();
        async move { open_on(&addr, name).await }
    };
    rt.block_on(async {
        for name in ["burst", "quiet"] {
            open(name)
                .await
                .exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)", ())
                .await
                .unwrap();
        }
    });
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let burst: Vec<_> = (0..8)
        .map(|w| {
            let mut db = rt.block_on(open("burst"));
            let running = running.clone();
            rt.spawn(async move {
                let mut written = 0u32;
                // Bounded: until the quiet writer is done, at most 5,000.
                while running.load(std::sync::atomic::Ordering::Relaxed) && written < 5_000 {
                    db.exec(
                        "INSERT INTO t (v) VALUES (?)",
                        dqlite_client::params![vec![w as u8; 1024]],
                    )
                    .await
                    .unwrap();
                    written += 1;
                }
                written
            })
        })
        .collect();
    let mut quiet = rt.block_on(open("quiet"));
    rt.block_on(async {
        // Let the burst get going: its first rows are committed.
        let mut probe = open("burst").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = probe.query_all("SELECT count(*) FROM t", ()).await.unwrap();
            if rows[0].get::<i64>(0).unwrap() >= 200 {
                break;
            }
            assert!(Instant::now() < deadline, "the burst did not start");
        }
        for i in 0..50i64 {
            quiet
                .exec(
                    "INSERT INTO t VALUES (?, ?)",
                    dqlite_client::params![i, vec![0u8; 16]],
                )
                .await
                .unwrap();
        }
    });
    let burst_still_running = burst.iter().all(|h| !h.is_finished());
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let written: Vec<u32> = rt.block_on(async {
        let mut out = Vec::new();
        for h in burst {
            out.push(h.await.unwrap());
        }
        out
    });
    assert!(
        burst_still_running,
        "the quiet database's 50 writes waited for the burst to end (burst wrote {written:?})"
    );
    let rows = rt
        .block_on(quiet.query_all("SELECT count(*) FROM t", ()))
        .unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 50);
}

/// Writers of one database take turns in arrival order at the leader
/// instead of colliding in SQLite's lock: sixteen clients writing at once
/// never see SQLITE_BUSY, and every row lands.
#[test]
fn concurrent_writers_queue_instead_of_failing_busy() {
    let cluster = Cluster::start(1, &[]);
    let leader = cluster.leader(Duration::from_secs(10));
    let leader_addr = cluster.nodes[leader].address.clone();
    let rt = runtime();
    let open = || {
        let addr = leader_addr.clone();
        async move { open_on(&addr, "queue").await }
    };
    rt.block_on(async {
        open()
            .await
            .exec("CREATE TABLE t (w INTEGER, i INTEGER, v BLOB)", ())
            .await
            .unwrap();
    });
    let writers: Vec<_> = (0..16i64)
        .map(|w| {
            let mut db = rt.block_on(open());
            rt.spawn(async move {
                for i in 0..100i64 {
                    db.exec(
                        "INSERT INTO t VALUES (?, ?, ?)",
                        dqlite_client::params![w, i, vec![7u8; 512]],
                    )
                    .await
                    .map_err(|e| format!("writer {w}, row {i}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for h in writers {
        rt.block_on(h).unwrap().unwrap();
    }
    let rows = rt
        .block_on(async { open().await.query_all("SELECT count(*) FROM t", ()).await })
        .unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 1600);
}

/// Polls `ok` until it holds or `timeout` passes.
fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("not in {timeout:?}: {what}");
    false
}

/// A removed node logs its removal. By default it exits; with
/// `--on-removal wait` it stays up and refuses every client with an error
/// that names the remaining members, instead of serving silence.
#[test]
fn a_removed_node_logs_it_and_stops_serving() {
    let mut cluster = Cluster::start(3, &[]);
    let join = cluster.nodes[0].address.clone();
    let mut waiter = Proc::new(
        cluster.root.path(),
        "n4",
        &["--join", &join, "--on-removal", "wait"],
    );
    waiter.start();
    cluster.nodes.push(waiter);
    let servers = cluster.servers();
    // The role manager keeps three voters; the fourth node is a standby.
    assert!(wait_for(
        "four members, three of them voters",
        Duration::from_secs(30),
        || {
            let m = members(&servers);
            m.len() == 4 && m.iter().filter(|n| n.2 == "voter").count() == 3
        }
    ));
    let id_of = |address: &str| {
        members(&servers)
            .into_iter()
            .find(|m| m.1 == address)
            .map(|m| m.0)
            .expect("a member")
    };
    // Keep the leader among the nodes that stay (removing a leader works
    // too, but is not what this test is about).
    if cluster.leader(Duration::from_secs(10)) != 0 {
        let id = id_of(&cluster.nodes[0].address).to_string();
        let out = cli(&["cluster", "-s", &servers, "transfer", &id]);
        assert!(out.success(), "{}", out.describe());
        assert!(wait_for("node 0 leads", Duration::from_secs(10), || {
            cluster.leader(Duration::from_secs(10)) == 0
        }));
    }
    let stays: Vec<String> = cluster.nodes[..2]
        .iter()
        .map(|n| n.address.clone())
        .collect();

    // --on-removal wait: up, logging, refusing with a pointer.
    let waiter_address = cluster.nodes[3].address.clone();
    let out = cli(&[
        "cluster",
        "-s",
        &servers,
        "remove",
        &id_of(&waiter_address).to_string(),
    ]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        wait_for("the removal is logged", Duration::from_secs(30), || {
            cluster.nodes[3]
                .read_log()
                .contains("this node was removed from the cluster: refusing clients until stopped")
        }),
        "{}",
        cluster.nodes[3].read_log()
    );
    let rt = runtime();
    let err = rt
        .block_on(async {
            let mut c = dqlite_client::Client::connect(
                &waiter_address,
                &client_config(Duration::from_secs(10)),
            )
            .await?;
            c.leader().await
        })
        .expect_err("a removed node refuses clients");
    assert_eq!(err.code(), Some(10250), "{err}");
    let message = err.server_message().unwrap_or_default().to_owned();
    assert!(
        message.contains(&format!(
            "({waiter_address}) was removed from the cluster; connect to its members instead:"
        )),
        "{message}"
    );
    for member in &stays {
        assert!(message.contains(member.as_str()), "{message}");
    }
    assert!(
        !message.contains(&format!("{waiter_address},")),
        "{message}"
    );
    assert!(
        cluster.nodes[3].is_alive(),
        "--on-removal wait keeps running"
    );

    // The default: log and exit.
    let leaver_address = cluster.nodes[2].address.clone();
    let out = cli(&[
        "cluster",
        "-s",
        &servers,
        "remove",
        &id_of(&leaver_address).to_string(),
    ]);
    assert!(out.success(), "{}", out.describe());
    let status = cluster.nodes[2].wait_exit(Duration::from_secs(30));
    let log = cluster.nodes[2].read_log();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(
        log.contains("this node was removed from the cluster: exiting"),
        "{log}"
    );
    // The cluster goes on without them.
    let out = cli(&["cluster", "-s", &stays.join(","), "list"]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.describe());
}

#[test]
fn large_transactions_commit_without_moving_leadership() {
    // 16 MiB transactions used to depose the leader: heartbeats queued
    // behind the append on the peer connection and the followers' answers
    // behind its fsync. They now travel apart and are answered at once
    // (the core test `slow_follower_disks_do_not_depose_the_leader` pins
    // the second part). At 50 ms (elections after 500-1000 ms): at the
    // default 20 ms a debug build on a loaded 2-core machine still loses
    // leadership in about one run of three (see docs/snapshots.md).
    let cluster = Cluster::start_with(3, &[], 50);
    wait_voters(&cluster.servers(), 3, Duration::from_secs(30));
    let leader = cluster.leader(Duration::from_secs(10));
    let leader_addr = cluster.nodes[leader].address.clone();
    let (_, before) = probe_leader(&leader_addr, Duration::from_secs(5)).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut db = open_on(&leader_addr, "big").await;
        db.exec("CREATE TABLE t (v BLOB)", ()).await.unwrap();
        for i in 0..4 {
            db.exec(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 16384) \
                 INSERT INTO t SELECT randomblob(1024) FROM c",
                (),
            )
            .await
            .unwrap_or_else(|e| panic!("16 MiB transaction {i}: {e:?}"));
        }
        let rows = db.query_all("SELECT count(*) FROM t", ()).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0).unwrap(), 4 * 16384);
    });
    let (_, after) = probe_leader(&leader_addr, Duration::from_secs(5)).unwrap();
    assert_eq!(after, before, "leadership moved during large transactions");
}
