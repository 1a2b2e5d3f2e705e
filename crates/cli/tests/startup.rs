//! `dqlite-rs node` and `dqlite-rs recover` refusing what they cannot do,
//! as real processes: each error text, nothing left behind by a failed
//! start, and no new cluster from a directory that once tried to join.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{dqlite_rs_bin, free_port, probe_leader, run_with_timeout, wait_child, Output};

/// A refused start or recovery exits at once; this only bounds a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn run(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(dqlite_rs_bin());
    cmd.args(args).arg("--dir").arg(dir);
    let out = run_with_timeout(cmd, None, RUN_TIMEOUT);
    assert!(!out.timed_out(), "hung:\n{}", out.describe());
    out
}

/// The one `Error: ` line of a failed run.
fn error_line(out: &Output) -> &str {
    assert!(!out.success(), "{}", out.describe());
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.describe());
    errors[0]
}

#[test]
fn a_port_in_use_fails_and_leaves_no_directory() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = run(&["node", "--address", &address], &dir);
    assert_eq!(
        error_line(&out),
        format!(
            "Error: cannot start node with data directory {} (another process holds the port: \
             stop it, or choose another --address): cannot listen on {address}: \
             Address already in use (os error 98)",
            dir.display()
        )
    );
    assert!(!dir.exists(), "a failed start left {}", dir.display());
}

#[test]
fn id_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let address = format!("127.0.0.1:{}", free_port());
    let out = run(&["node", "--id", "0", "--address", &address], &dir);
    assert_eq!(
        error_line(&out),
        "Error: --id 0 is not a node id: pass a positive id, or leave --id out \
         (1 for a new cluster; with --join the cluster allocates one)"
    );
    assert!(!dir.exists());
}

#[test]
fn recovery_refuses_a_directory_without_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let out = run(&["recover", "last-entry"], &missing);
    assert_eq!(
        error_line(&out),
        format!(
            "Error: cannot read the log in {d}: {d} does not hold a dqlite-rs node \
             (no such directory); pass the data directory of a stopped node",
            d = missing.display()
        )
    );
    assert_eq!(out.stdout, "");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let reason = format!(
        "{} does not hold a dqlite-rs node (no node.json in it); pass the data directory \
         of a stopped node",
        empty.display()
    );
    let out = run(
        &["recover", "reconfigure", "--node", "1=127.0.0.1:1=voter"],
        &empty,
    );
    assert!(error_line(&out).ends_with(&reason), "{}", out.describe());
    let out = run(
        &["recover", "adopt", "--id", "1", "--address", "127.0.0.1:1"],
        &empty,
    );
    assert!(error_line(&out).ends_with(&reason), "{}", out.describe());
    let out = run(&["recover", "last-entry"], &empty);
    assert!(error_line(&out).ends_with(&reason), "{}", out.describe());
    // Nothing was written into it.
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn a_directory_that_tried_to_join_does_not_bootstrap_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let dead = format!("127.0.0.1:{}", free_port());
    let address = format!("127.0.0.1:{}", free_port());
    // A join to a dead address; stopped once it has recorded the attempt.
    let mut joining = Command::new(dqlite_rs_bin())
        .args(["node", "--address", &address, "--join", &dead])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = dir.join(dqlite_node::JOIN_MARKER);
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "no join marker in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    joining.kill().unwrap();
    wait_child(&mut joining, RUN_TIMEOUT).expect("the joining node exits when killed");

    // Rerun without --join (default id 1, which would bootstrap): refused.
    let out = run(&["node", "--address", &address], &dir);
    assert_eq!(
        error_line(&out),
        format!(
            "Error: cannot start node with data directory {d}: data directory {d} once tried \
             to join a cluster, so it does not start a new one by itself: rerun with --join \
             ADDRESS of a member, or with --bootstrap to start a new cluster anyway, or use \
             an empty directory",
            d = dir.display()
        )
    );
    assert!(!dir.join("node.json").exists());

    // --bootstrap says it is meant: the node starts a cluster and leads it.
    let mut node = Command::new(dqlite_rs_bin())
        .args(["node", "--address", &address, "--bootstrap"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let led = loop {
        match probe_leader(&address, Duration::from_secs(2)) {
            Ok((_, leader)) if leader == address => break true,
            _ if Instant::now() >= deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = node.kill();
    let _ = wait_child(&mut node, RUN_TIMEOUT);
    assert!(led, "the --bootstrap node did not lead at {address}");
}
