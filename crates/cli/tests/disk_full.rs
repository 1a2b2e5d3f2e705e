//! A node whose data directory fills up. As the only node (so leader):
//! writes fail with `SQLITE_FULL` (13) "database or disk is full", and the
//! node says why in its log. As a follower: it stops acknowledging, stays
//! up, the other two keep the cluster writable, and once space is freed it
//! catches up by itself. The directory is a small tmpfs, so the tests need
//! root for `mount` (CI runs as root); without it they fail, never skip.

mod support;

use support::cli;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{cluster::Proc, image_hash, insert_rows, totals_on};

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test needs root, as in CI): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the node may still hold files open if the test panicked.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_sqlite_full_for_the_client_and_logged_on_the_node() {
    let root = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&root.path().join("mnt"), "24m");
    let mut node = Proc::new(&mount.0, "n1", &["--id", "1"]);
    // The log goes beside the tmpfs, so it can be written once it is full.
    node.log = root.path().join("n1.log");
    node.start();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = dqlite_client::Config::default();
    config.request_timeout = Duration::from_secs(30);
    let outcome = rt.block_on(async {
        let mut db =
            dqlite_client::Database::connect_with(&[node.address.as_str()], "full", &config)
                .await
                .expect("connect");
        db.exec("CREATE TABLE t (b BLOB)", ())
            .await
            .expect("create");
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut seen = Vec::new();
        // Each row replicates 256 KiB of pages (random: pages of zeros
        // would travel as tiny patches): 24 MiB is full well before the
        // bound.
        for i in 0..400 {
            if Instant::now() >= deadline {
                break;
            }
            match db
                .exec("INSERT INTO t VALUES (randomblob(262144))", ())
                .await
            {
                Ok(_) => {}
                Err(err) if err.code() == Some(13) => return Ok((i, err.to_string(), seen)),
                // The write in flight when the disk filled has an unknown
                // outcome (it commits if space comes back); the ones after
                // it are refused at once.
                Err(err) if err.outcome_unknown() || err.needs_reconnect() => {
                    seen.push(err.to_string());
                    if err.needs_reconnect() {
                        db = dqlite_client::Database::connect_with(
                            &[node.address.as_str()],
                            "full",
                            &config,
                        )
                        .await
                        .expect("reconnect");
                    }
                }
                Err(err) => return Err(format!("unexpected error after {i} rows: {err}")),
            }
        }
        Err(format!("no SQLITE_FULL in time; errors seen: {seen:?}"))
    });
    let log = node.read_log();
    let (rows, message, seen) = match outcome {
        Ok(found) => found,
        Err(why) => panic!("{why}\n--- node log ---\n{log}"),
    };
    assert!(rows > 0, "some rows fit: {log}");
    assert!(
        message.starts_with("database or disk is full (code 13)"),
        "{message}"
    );
    assert!(seen.len() <= 2, "{seen:?}");
    assert!(
        log.contains("the disk is full: writes are refused until space is freed"),
        "{log}"
    );
    assert!(log.contains("No space left on device"), "{log}");
    node.stop("TERM");
}

/// Polls `ok` every 200 ms until it holds or `timeout` passes.
fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ok()
}

#[test]
fn a_follower_with_a_full_disk_stops_acknowledging_and_catches_up_once_space_is_freed() {
    follower_fills_up(&[]);
}

/// Disk mode: the full node's checkpoints and snapshots fail too (in the
/// background), and it still catches up and returns every row.
#[test]
fn a_disk_mode_follower_with_a_full_disk_catches_up_once_space_is_freed() {
    follower_fills_up(&[
        "--disk-mode",
        "--snapshot-threshold",
        "8",
        "--snapshot-trailing",
        "2",
    ]);
}

fn follower_fills_up(mode: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let mut n1 = Proc::new(root.path(), "n1", mode);
    n1.start();
    let join = n1.address.clone();
    let mut join_args: Vec<&str> = vec!["--join", &join];
    join_args.extend_from_slice(mode);
    let mut n2 = Proc::new(root.path(), "n2", &join_args);
    n2.start();
    let mount = Tmpfs::mount(&root.path().join("mnt"), "24m");
    let mut n3 = Proc::new(&mount.0, "n3", &join_args);
    // The log goes beside the tmpfs, so it can be written once it is full.
    n3.log = root.path().join("n3.log");
    n3.start();
    let addresses = vec![n1.address.clone(), n2.address.clone(), n3.address.clone()];
    let servers = addresses.join(",");
    let voters = || {
        let out = cli(&["cluster", "-s", &servers, "list"]);
        out.stdout.lines().filter(|l| l.contains("voter")).count() == 3
    };
    assert!(wait_for(Duration::from_secs(60), voters), "not 3 voters");
    let full_line = "the disk is full: writes are refused until space is freed";

    // Rows of 256 KiB: n3's 24 MiB fill up, the others' disks do not. Every
    // write is acknowledged by n1 and n2 meanwhile.
    let mut rows = 0;
    while !n3.read_log().contains(full_line) {
        assert!(rows < 400, "n3 never filled up:\n{}", n3.read_log());
        insert_rows(&addresses, "full", rows, 10, 256 << 10);
        rows += 10;
    }
    // Full, it stays up; the cluster keeps taking writes through the others.
    insert_rows(&addresses, "full", rows, 20, 256 << 10);
    rows += 20;
    assert!(n3.is_alive(), "the full node exited:\n{}", n3.read_log());
    // It acknowledged none of those: it could not persist them, so it did
    // not apply them either.
    let lagging = image_hash(&n3.address, "full").expect("the full node stopped serving");
    let (_, leader) = support::probe_leader(&n1.address, Duration::from_secs(5)).expect("a leader");
    assert_ne!(
        Ok(lagging),
        image_hash(&leader, "full"),
        "n3 kept up while full"
    );

    // Space comes back: it persists what it was sent and catches up.
    let out = Command::new("mount")
        .args(["-o", "remount,size=1g"])
        .arg(&mount.0)
        .output()
        .expect("run mount");
    assert!(out.status.success(), "remount: {out:?}");
    let same = wait_for(Duration::from_secs(120), || {
        let hashes: Vec<_> = addresses.iter().map(|a| image_hash(a, "full")).collect();
        hashes.iter().all(|h| h.is_ok() && *h == hashes[0])
    });
    assert!(same, "n3 did not catch up:\n{}", n3.read_log());
    assert!(
        n3.read_log().contains("persisting the log recovered"),
        "{}",
        n3.read_log()
    );

    // Made leader, it returns every acknowledged row.
    let id = {
        let out = cli(&["cluster", "-s", &servers, "list"]);
        out.stdout
            .lines()
            .find(|l| l.contains(&n3.address))
            .and_then(|l| l.split_whitespace().next())
            .expect("n3 listed")
            .to_string()
    };
    let leads = wait_for(Duration::from_secs(60), || {
        let _ = cli(&["cluster", "-s", &servers, "transfer", &id]);
        support::probe_leader(&n3.address, Duration::from_secs(2))
            .is_ok_and(|(_, addr)| addr == n3.address)
    });
    assert!(leads, "n3 never became leader:\n{}", n3.read_log());
    let totals = wait_for(Duration::from_secs(30), || {
        totals_on(&n3.address, "full").is_ok()
    });
    assert!(totals, "cannot read on n3");
    assert_eq!(
        totals_on(&n3.address, "full").unwrap(),
        (rows, (0..rows).sum::<i64>())
    );
    for n in [&mut n1, &mut n2, &mut n3] {
        n.stop("TERM");
    }
}
