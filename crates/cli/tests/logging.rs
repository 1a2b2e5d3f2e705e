//! `dqlite-rs node --log-format json --log-level ...`: log lines are JSON
//! objects, and the flag takes precedence over RUST_LOG.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{dqlite_rs_bin, run_with_timeout, Node, NODE_STOP_TIMEOUT};

#[test]
fn json_logs_parse_and_the_flag_overrides_rust_log() {
    // RUST_LOG alone would hide the info lines; --log-level brings them back.
    let mut node = Node::start_with(
        1,
        &["--log-format", "json", "--log-level", "info"],
        &[("RUST_LOG", "error")],
    );
    node.stop_with("TERM", NODE_STOP_TIMEOUT)
        .expect("node stops on SIGTERM");
    let log = node.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}\n{log}")))
        .collect();
    let listening = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening on"))
        })
        .unwrap_or_else(|| panic!("no 'listening on' line in\n{log}"));
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert!(listening["timestamp"].is_string(), "{listening}");
    assert!(listening["target"].is_string(), "{listening}");
}

#[test]
fn a_bad_log_level_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(dqlite_rs_bin());
    cmd.args([
        "node",
        "--address",
        "127.0.0.1:0",
        "--log-level",
        "info,x=[",
    ])
    .arg("--dir")
    .arg(dir.path());
    let out = run_with_timeout(cmd, None, Duration::from_secs(30));
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stderr.contains("--log-level"), "{}", out.describe());
}
