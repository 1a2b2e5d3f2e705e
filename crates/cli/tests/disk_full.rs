//! A node whose data directory fills up: writes fail with `SQLITE_FULL`
//! (13) "database or disk is full", and the node says why in its log. The
//! directory is a small tmpfs, so the test needs root for `mount` (CI runs
//! as root); without it the test fails, it never skips.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::cluster::Proc;

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
        // Each row replicates 256 KiB of pages: 24 MiB is full well
        // before the bound.
        for i in 0..400 {
            if Instant::now() >= deadline {
                break;
            }
            match db.exec("INSERT INTO t VALUES (zeroblob(262144))", ()).await {
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
