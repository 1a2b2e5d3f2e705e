//! Follower reads on a cluster of real `dqlite-rs node` processes:
//! linearizable reads on followers see every write acknowledged before
//! them, bounded-stale reads on a cut-off follower are refused once their
//! bound has passed, writes on a follower-read connection answer 10250,
//! and unmodified clients can opt in (a database name with
//! `?dqlite_read_mode=`, then `PRAGMA dqlite_read_mode` in plain SQL, also
//! through Debian's `dqlite` shell).

mod support;

use support::wait_voters;

use std::process::Command;
use std::time::{Duration, Instant};

use dqlite_client::{Client, Config, Database, ReadMode};
use support::cluster::Cluster;
use support::{dqlite_rs_bin, metric, run_with_timeout, runtime, send_signal};

fn config(read_mode: ReadMode) -> Config {
    let mut c = Config::default();
    c.connect_timeout = Duration::from_secs(10);
    c.request_timeout = Duration::from_secs(20);
    c.read_mode = read_mode;
    c
}

/// A connection to `name` on the node at `address` itself.
async fn open_on(address: &str, name: &str, read_mode: ReadMode) -> Database {
    Client::connect(address, &config(read_mode))
        .await
        .unwrap()
        .open(name)
        .await
        .unwrap()
}

fn started(n: usize, extra: &[&str]) -> (Cluster, usize) {
    let cluster = Cluster::start(n, extra);
    wait_voters(&cluster.servers(), n, Duration::from_secs(60));
    let leader = cluster.leader(Duration::from_secs(20));
    (cluster, leader)
}

async fn count(db: &mut Database, sql: &str) -> dqlite_client::Result<i64> {
    let rows = db.query_all(sql, ()).await?;
    rows[0].get(0)
}

/// Every write acknowledged on the leader is visible to the very next
/// linearizable read on either follower: 400 rounds, alternating
/// followers, each read right after its write's acknowledgement.
#[test]
fn linearizable_follower_reads_see_every_acknowledged_write() {
    follower_reads_see_every_acknowledged_write(&[]);
}

/// The same with read leases, where the leader answers the followers'
/// requests for a read index from its lease (counted by its metric).
#[test]
fn follower_reads_under_a_read_lease_see_every_acknowledged_write() {
    let (_cluster, leader_addr) = follower_reads_see_every_acknowledged_write(&["--read-lease"]);
    let leased = metric(&leader_addr, "dqlite_raft_lease_reads_total");
    assert!(leased > 0, "no read index was answered under the lease");
}

/// The rounds of [`linearizable_follower_reads_see_every_acknowledged_write`]
/// on a cluster started with `extra`; returns it, still running, and its
/// leader's address.
fn follower_reads_see_every_acknowledged_write(extra: &[&str]) -> (Cluster, String) {
    let (cluster, leader) = started(3, extra);
    let leader_addr = cluster.nodes[leader].address.clone();
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.nodes[i].address.clone())
        .collect();
    let rt = runtime();
    rt.block_on(async {
        let mut writer = open_on(&leader_addr, "lin", ReadMode::Leader).await;
        writer
            .exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", ())
            .await
            .unwrap();
        let mut readers = Vec::new();
        for addr in &followers {
            readers.push(open_on(addr, "lin", ReadMode::Follower).await);
        }
        let deadline = Instant::now() + Duration::from_secs(240);
        const ROUNDS: i64 = 400;
        for i in 1..=ROUNDS {
            assert!(Instant::now() < deadline, "only {i} rounds in time");
            writer
                .exec(
                    "INSERT INTO t VALUES (?, ?)",
                    dqlite_client::params![i, i * 7],
                )
                .await
                .unwrap();
            let reader = &mut readers[(i % 2) as usize];
            let seen = count(reader, "SELECT max(id) FROM t").await.unwrap();
            assert!(
                seen >= i,
                "round {i}: a follower read saw only up to {seen}"
            );
            // The same through a prepared statement (PREPARE + QUERY).
            if i % 50 == 0 {
                let stmt = reader
                    .prepare("SELECT v FROM t WHERE id = ?")
                    .await
                    .unwrap();
                let rows = stmt
                    .query_all(reader, dqlite_client::params![i])
                    .await
                    .unwrap();
                assert_eq!(rows[0].get::<i64>(0).unwrap(), i * 7);
            }
        }

        // Writes on a follower-read connection to a follower: 10250, and
        // nothing written.
        let reader = &mut readers[0];
        for sql in [
            "INSERT INTO t VALUES (100000, 0)",
            "DELETE FROM t",
            "CREATE TABLE u (a)",
        ] {
            let err = reader.exec(sql, ()).await.expect_err(sql);
            assert_eq!(err.code(), Some(10250), "{sql}: {err:?}");
        }
        let stmt = reader.prepare("UPDATE t SET v = 0").await.unwrap();
        let err = stmt
            .exec(reader, ())
            .await
            .expect_err("a prepared write on a follower");
        assert_eq!(err.code(), Some(10250), "{err:?}");
        // A read-only transaction runs on the follower.
        reader.exec("BEGIN", ()).await.unwrap();
        let n = count(reader, "SELECT count(*) FROM t").await.unwrap();
        reader.exec("COMMIT", ()).await.unwrap();
        assert_eq!(n, ROUNDS);
        let n = count(&mut writer, "SELECT count(*) FROM t WHERE v = 0").await;
        assert_eq!(n.unwrap(), 0);
    });
    (cluster, leader_addr)
}

/// An unmodified client opts in through the database name it opens on a
/// follower, then changes the mode with plain SQL; without the opt-in the
/// follower answers 10250 as before.
#[test]
fn plain_sql_opts_a_connection_in() {
    let (cluster, leader) = started(3, &[]);
    let follower = cluster.nodes[(leader + 1) % 3].address.clone();
    let leader_addr = cluster.nodes[leader].address.clone();
    let rt = runtime();
    rt.block_on(async {
        let mut w = open_on(&leader_addr, "plain", ReadMode::Leader).await;
        w.exec("CREATE TABLE t (a); INSERT INTO t VALUES (1)", ())
            .await
            .unwrap();
        // Without the opt-in a follower refuses OPEN (dqlite 1.18.2;
        // clients move to the leader on it).
        let client = Client::connect(&follower, &config(ReadMode::Leader))
            .await
            .unwrap();
        let err = client.open("plain").await.unwrap_err();
        assert_eq!(err.code(), Some(10250), "{err:?}");
        // With it in the database name, as any client can send it.
        let client = Client::connect(&follower, &config(ReadMode::Leader))
            .await
            .unwrap();
        let mut db = client
            .open("plain?dqlite_read_mode=follower")
            .await
            .unwrap();
        let mode = db.query_all("PRAGMA dqlite_read_mode", ()).await.unwrap();
        assert_eq!(mode[0].get::<String>(0).unwrap(), "follower");
        let rows = db.query_all("SELECT a FROM t", ()).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0).unwrap(), 1);
        let err = db
            .exec("PRAGMA dqlite_read_mode = anywhere", ())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("leader, follower or stale:MS"),
            "{err}"
        );
        db.exec("PRAGMA dqlite_read_mode = 'stale:500'", ())
            .await
            .unwrap();
        let mode = db.query_all("PRAGMA dqlite_read_mode", ()).await.unwrap();
        assert_eq!(mode[0].get::<String>(0).unwrap(), "stale:500");
        db.exec("PRAGMA dqlite_read_mode = follower", ())
            .await
            .unwrap();
        let rows = db.query_all("SELECT a FROM t", ()).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0).unwrap(), 1);
        // The pragma through PREPARE and EXEC, as database/sql drivers
        // send a statement with arguments; a bad value fails at PREPARE.
        let err = db
            .prepare("PRAGMA dqlite_read_mode = nowhere")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("leader, follower or stale:MS"),
            "{err}"
        );
        let stmt = db
            .prepare("PRAGMA dqlite_read_mode = leader")
            .await
            .unwrap();
        stmt.exec(&mut db, ()).await.unwrap();
        let err = db.query_all("SELECT a FROM t", ()).await.unwrap_err();
        assert_eq!(err.code(), Some(10250), "{err:?}");
    });
    // Our shell, pointed at the follower with --read-mode, reads there.
    let mut cmd = Command::new(dqlite_rs_bin());
    cmd.args([
        "shell",
        "-s",
        &follower,
        "--read-mode",
        "follower",
        "-f",
        "csv",
        "plain",
        "--command",
        "PRAGMA dqlite_read_mode; SELECT a FROM t; INSERT INTO t VALUES (2);",
    ]);
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
    assert!(out.stdout.contains("follower"), "{}", out.describe());
    assert!(
        out.stdout.lines().any(|l| l.trim() == "1"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("not leader") || out.stderr.contains("not leader"),
        "a write from the shell on a follower: {}",
        out.describe()
    );
    // Debian's shell (go-dqlite) sends the pragma like any statement; it
    // connects to the leader, where the mode changes nothing.
    let shell = |sql: &str| {
        let mut cmd = Command::new("/usr/bin/dqlite");
        cmd.args(["-s", &cluster.servers(), "plain", sql]);
        run_with_timeout(cmd, None, Duration::from_secs(60))
    };
    let out = shell("PRAGMA dqlite_read_mode = follower");
    assert!(
        out.success() && !out.stdout.contains("Error"),
        "{}",
        out.describe()
    );
    let out = shell("PRAGMA dqlite_read_mode = sometimes");
    assert!(
        out.stdout.contains("leader, follower or stale:MS")
            || out.stderr.contains("leader, follower or stale:MS"),
        "{}",
        out.describe()
    );
}

/// A follower cut off from the rest of the cluster serves bounded-stale
/// reads only while its last confirmation with the leader is within the
/// bound; past it, reads are refused (10250, naming the bound), and they
/// work again once the cluster is back.
#[test]
fn stale_reads_on_a_cut_off_follower_fail_once_the_bound_passes() {
    let (cluster, leader) = started(3, &[]);
    let follower = (leader + 1) % 3;
    let others: Vec<u32> = (0..3)
        .filter(|i| *i != follower)
        .filter_map(|i| cluster.nodes[i].pid())
        .collect();
    let leader_addr = cluster.nodes[leader].address.clone();
    let follower_addr = cluster.nodes[follower].address.clone();
    let rt = runtime();
    rt.block_on(async {
        let mut w = open_on(&leader_addr, "stale", ReadMode::Leader).await;
        w.exec("CREATE TABLE t (a); INSERT INTO t VALUES (1)", ())
            .await
            .unwrap();
        let bound = Duration::from_millis(300);
        let mut stale = open_on(&follower_addr, "stale", ReadMode::Stale(bound)).await;
        let mut lin = open_on(&follower_addr, "stale", ReadMode::Follower).await;
        // The first read confirms with the leader.
        assert_eq!(
            count(&mut stale, "SELECT count(*) FROM t").await.unwrap(),
            1
        );
        for pid in &others {
            send_signal(*pid, "STOP");
        }
        let cut = Instant::now();
        // Polled: reads may succeed while within the bound; once it has
        // passed, each one must fail.
        let mut refused = None;
        while cut.elapsed() < Duration::from_secs(60) {
            let elapsed = cut.elapsed();
            match count(&mut stale, "SELECT count(*) FROM t").await {
                Ok(n) => {
                    assert!(
                        elapsed <= bound,
                        "a stale:300 read served {elapsed:?} after the cut"
                    );
                    assert_eq!(n, 1);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lin_err = lin.query_all("SELECT count(*) FROM t", ()).await;
        for pid in &others {
            send_signal(*pid, "CONT");
        }
        let err = refused.expect("a stale read refused once the bound passed");
        assert_eq!(err.code(), Some(10250), "{err:?}");
        assert!(err.to_string().contains("stale:300"), "{err}");
        let err = lin_err.expect_err("a linearizable read on a cut-off follower");
        assert_eq!(err.code(), Some(10250), "{err:?}");
        // Back in touch: reads are served again.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match count(&mut stale, "SELECT count(*) FROM t").await {
                Ok(n) => {
                    assert_eq!(n, 1);
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no read after the cut healed: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
