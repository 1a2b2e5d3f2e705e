//! TLS for dqlite clients, as LXD runs it: one self-signed cluster
//! certificate (made with the openssl command the README gives) is CA and
//! identity of every node and client. Debian's `dqlite` shell (go-dqlite,
//! `-c/-k`, which dials with `ServerName` set to the certificate's first
//! DNS name) reads and writes through a follower of a 3-node cluster of
//! real `dqlite-rs node` processes; plaintext is refused; our shell,
//! `cluster` subcommand and client take the same files.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::cluster::Proc;
use support::{dqlite_rs_bin, probe_leader, run_with_timeout, runtime, Output};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Makes `cluster.crt`/`cluster.key` in `dir` with the README's command.
fn cluster_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("cluster.crt"), dir.join("cluster.key"));
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=dqlite",
        "-addext",
        "subjectAltName=DNS:dqlite",
        "-keyout",
    ])
    .arg(&key)
    .arg("-out")
    .arg(&crt);
    let out = run_with_timeout(cmd, None, TIMEOUT);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "openssl: {}",
        out.stderr
    );
    (crt, key)
}

fn tls_config(crt: &Path, key: &Path) -> dqlite_client::Config {
    let cert = std::fs::read(crt).unwrap();
    let mut c = dqlite_client::Config::default();
    c.connect_timeout = Duration::from_secs(10);
    c.request_timeout = Duration::from_secs(10);
    c.tls = Some(dqlite_client::Tls::from_pem(&cert, &cert, &std::fs::read(key).unwrap()).unwrap());
    c
}

/// Waits (bounded) until the node logs that it started.
fn wait_started(p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        assert!(p.is_alive(), "node {} exited\n{}", p.address, p.read_log());
        if p.read_log().contains("node started") {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("node {} did not start\n{}", p.address, p.read_log());
}

fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_with_timeout(cmd, stdin.map(str::as_bytes), TIMEOUT)
}

#[test]
fn debian_shell_reads_and_writes_through_a_follower_of_a_tls_cluster() {
    let shell = PathBuf::from("/usr/bin/dqlite");
    assert!(
        shell.exists(),
        "Debian's dqlite shell is missing: apt-get install -y go-dqlite (this test never skips)"
    );
    let root = tempfile::tempdir().unwrap();
    let (crt, key) = cluster_certificate(root.path());
    let (crt_s, key_s) = (crt.to_str().unwrap(), key.to_str().unwrap());
    let tls_args = ["--tls-ca", crt_s, "--tls-cert", crt_s, "--tls-key", key_s];

    let mut nodes: Vec<Proc> = Vec::new();
    for i in 0..3 {
        let mut args = tls_args.to_vec();
        let join = nodes.first().map(|n| n.address.clone());
        if let Some(j) = &join {
            args.extend(["--join", j.as_str()]);
        }
        let mut p = Proc::new(root.path(), &format!("n{}", i + 1), &args);
        p.spawn();
        wait_started(&mut p);
        nodes.push(p);
    }
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let config = tls_config(&crt, &key);

    // The Rust client finds the leader over TLS, and every node is a voter
    // (so a follower is a real raft follower).
    let leader = runtime().block_on(async {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut c = dqlite_client::Client::find_leader(&addresses, &config)
                .await
                .expect("leader over TLS");
            let members = c.cluster().await.expect("CLUSTER over TLS");
            let voters = members
                .iter()
                .filter(|n| n.role == dqlite_client::Role::Voter)
                .count();
            if voters == 3 {
                break c.address().to_string();
            }
            assert!(Instant::now() < deadline, "3 voters: {members:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let follower = addresses.iter().find(|a| **a != leader).unwrap().clone();

    // A plaintext dqlite client gets nothing: the connection is closed.
    let plain = probe_leader(&follower, Duration::from_secs(5));
    assert!(plain.is_err(), "plaintext LEADER answered: {plain:?}");
    let mut plain_config = config.clone();
    plain_config.tls = None;
    let refused = runtime().block_on(async {
        dqlite_client::Client::connect(&follower, &plain_config)
            .await?
            .leader()
            .await
    });
    assert!(refused.is_err(), "plaintext client answered: {refused:?}");

    // Debian's shell, pointed at the follower only, is redirected to the
    // leader and writes and reads.
    let out = run(
        &shell,
        &["-s", &follower, "-c", crt_s, "-k", key_s, "demo"],
        Some("CREATE TABLE t (x INTEGER);\nINSERT INTO t VALUES (42);\nSELECT x FROM t;\n"),
    );
    assert!(
        out.status.is_some_and(|s| s.success())
            && out.stdout.contains("42")
            && !out.stdout.contains("Error"),
        "dqlite shell: {out:?}"
    );

    // Our shell with the same files, through the same follower.
    let ours = dqlite_rs_bin();
    let out = run(
        &ours,
        &[
            "shell",
            "-s",
            &follower,
            "-c",
            crt_s,
            "-k",
            key_s,
            "demo",
            "--command",
            "INSERT INTO t VALUES (43); SELECT x FROM t ORDER BY x",
        ],
        None,
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "our shell: {out:?}"
    );
    assert!(
        out.stdout.contains("42") && out.stdout.contains("43"),
        "our shell: {out:?}"
    );
    // Without the files it cannot get in.
    let out = run(
        &ours,
        &[
            "shell",
            "-s",
            &follower,
            "--timeout",
            "2",
            "demo",
            "--command",
            "SELECT 1",
        ],
        None,
    );
    assert!(
        !out.status.is_some_and(|s| s.success()),
        "plaintext shell worked: {out:?}"
    );

    // The cluster subcommand, with --ca given explicitly.
    let out = run(
        &ours,
        &[
            "cluster", "-s", &follower, "-c", crt_s, "-k", key_s, "--ca", crt_s, "list",
        ],
        None,
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "cluster list: {out:?}"
    );
    assert_eq!(out.stdout.lines().count(), 3, "cluster list: {out:?}");

    // Debian's shell sees what ours wrote.
    let out = run(
        &shell,
        &[
            "-s",
            &follower,
            "-c",
            crt_s,
            "-k",
            key_s,
            "demo",
            "SELECT count(*) FROM t",
        ],
        None,
    );
    assert!(out.stdout.contains('2'), "dqlite shell: {out:?}");
}
