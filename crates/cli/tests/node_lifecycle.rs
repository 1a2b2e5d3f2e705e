//! `dqlite-rs node` as a process: it stops cleanly on SIGINT and SIGTERM,
//! keeps what it committed across a restart, and refuses a data directory
//! that another node holds.

mod support;

use std::process::Command;
use std::time::Duration;

use dqlite_client::Database;
use support::{run_with_timeout, Node, NODE_STOP_TIMEOUT};

/// Runs `f` against database "life" on the node at `address`.
fn with_db<T>(address: &str, f: impl AsyncFnOnce(&mut Database) -> T) -> T {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addresses = [address];
        let connect = Database::connect(&addresses, "life");
        let mut db = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .expect("connect in time")
            .expect("connect");
        f(&mut db).await
    })
}

fn exec(address: &str, sql: &str) {
    with_db(address, async |db| {
        db.exec(sql, ()).await.expect("exec");
    });
}

fn count(address: &str) -> i64 {
    with_db(address, async |db| {
        let rows = db.query_all("SELECT count(*) FROM t", ()).await.unwrap();
        rows[0].get(0).unwrap()
    })
}

#[test]
fn sigterm_and_sigint_stop_the_node_cleanly() {
    for signal in ["TERM", "INT"] {
        let mut node = Node::start(1);
        exec(&node.address, "CREATE TABLE t (v)");
        let status = node
            .stop_with(signal, NODE_STOP_TIMEOUT)
            .unwrap_or_else(|| {
                panic!("SIG{signal}: node still running after {NODE_STOP_TIMEOUT:?}")
            });
        assert!(
            status.success(),
            "SIG{signal}: exit {status}\n{}",
            node.log()
        );
        assert!(node.log().contains("stopped"), "{}", node.log());
    }
}

#[test]
fn a_second_node_on_the_same_directory_is_refused() {
    let node = Node::start(1);
    let mut cmd = Command::new(support::dqlite_rs_bin());
    cmd.args(["node", "--address", "127.0.0.1:0", "--dir"])
        .arg(&node.dir);
    let out = run_with_timeout(cmd, None, Duration::from_secs(30));
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.describe()
            .contains("in use by another dqlite-rs process"),
        "{}",
        out.describe()
    );
    // The first node is undisturbed.
    exec(&node.address, "CREATE TABLE IF NOT EXISTS t (v)");
}

#[test]
fn committed_rows_survive_a_restart() {
    let mut node = Node::start(1);
    exec(
        &node.address,
        "CREATE TABLE t (v); INSERT INTO t VALUES (1), (2)",
    );
    // SIGKILL: no chance to flush anything that was not already durable.
    node.stop_with("KILL", NODE_STOP_TIMEOUT);
    // Same directory and address; `node` keeps the temporary directory alive.
    let mut cmd = Command::new(support::dqlite_rs_bin());
    cmd.args(["node", "--address", &node.address, "--dir"])
        .arg(&node.dir);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while support::probe_leader(&node.address, Duration::from_secs(2)).map(|(_, a)| a)
        != Ok(node.address.clone())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "restarted node not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = count(&node.address);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rows, 2);
}
