//! Debian's `dqlite-demo` (go-dqlite's app over libdqlite.so.0), unchanged,
//! on this library: three processes on loopback form a cluster through
//! the demo's own join path, serve its HTTP API, show 3 voters to
//! go-dqlite's `dqlite` shell, and survive SIGKILL of one, which rejoins
//! when restarted.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{built_library, has_mapped, library_dir, loopback_ip, run_with_timeout, wait_for};

const DEMO: &str = "/usr/bin/dqlite-demo";
const SHELL: &str = "/usr/bin/dqlite";
/// Cluster formation and elections on a loaded 2-core machine.
const FORM: Duration = Duration::from_secs(120);

/// One `dqlite-demo` process.
struct Demo {
    api: String,
    db: String,
    join: Option<String>,
    dir: PathBuf,
    lib: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Demo {
    fn new(root: &Path, lib: &Path, ip: &str, n: u16, join: Option<&str>) -> Demo {
        let api = format!("{ip}:{}", support::free_port(ip));
        let db = format!("{ip}:{}", support::free_port(ip));
        std::fs::create_dir_all(root).expect("node dir");
        Demo {
            api,
            db,
            join: join.map(str::to_string),
            dir: root.join("data"),
            lib: lib.to_path_buf(),
            log: root.join(format!("demo{n}.log")),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(DEMO);
        cmd.args(["--api", &self.api, "--db", &self.db, "--dir"])
            .arg(&self.dir)
            .env("LD_LIBRARY_PATH", &self.lib)
            .env("LIBDQLITE_TRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        self.child = Some(cmd.spawn().expect("spawn dqlite-demo"));
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP API's answer, if it answers.
    fn http(&self, method: &str, key: &str, body: &str) -> Option<String> {
        let mut s = TcpStream::connect(&self.api).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "{method} /{key} HTTP/1.0\r\nHost: demo\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        Some(body.trim().to_string())
    }

    /// Stores `key` through this node's API once it accepts writes.
    fn put(&self, key: &str, value: &str) {
        wait_for(&format!("PUT {key} on {}", self.api), FORM, || {
            (self.http("PUT", key, value).as_deref() == Some("done")).then_some(())
        });
    }

    /// Waits until this node's API reads `value` for `key`.
    fn expect(&self, key: &str, value: &str) {
        wait_for(
            &format!("GET {key} = {value} on {}", self.api),
            FORM,
            || (self.http("GET", key, "").as_deref() == Some(value)).then_some(()),
        );
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Members as go-dqlite's `dqlite` shell lists them: (id, address, role).
fn shell_cluster(servers: &str) -> Option<Vec<(String, String, String)>> {
    let mut cmd = Command::new(SHELL);
    cmd.args(["-s", servers, "demo", ".cluster"]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    if !out.success() {
        return None;
    }
    Some(
        out.stdout
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').map(str::trim).collect();
                (f.len() == 3).then(|| (f[0].into(), f[1].into(), f[2].into()))
            })
            .collect(),
    )
}

fn voters(servers: &str) -> Option<Vec<String>> {
    let members = shell_cluster(servers)?;
    Some(
        members
            .into_iter()
            .filter(|(_, _, role)| role == "voter")
            .map(|(_, address, _)| address)
            .collect(),
    )
}

#[test]
fn dqlite_demo_forms_a_cluster_serves_and_survives_a_sigkill() {
    for tool in [DEMO, SHELL] {
        assert!(
            Path::new(tool).exists(),
            "apt-get install -y go-dqlite (this test never skips)"
        );
    }
    let root = tempfile::tempdir().expect("tempdir");
    let lib = library_dir(root.path());
    let ip = loopback_ip();
    let mut demos = Vec::new();
    let first = Demo::new(&root.path().join("n1"), &lib, &ip, 1, None);
    let join = first.db.clone();
    demos.push(first);
    for n in 2..=3 {
        demos.push(Demo::new(
            &root.path().join(format!("n{n}")),
            &lib,
            &ip,
            n,
            Some(&join),
        ));
    }
    let logs = |demos: &[Demo]| {
        demos
            .iter()
            .map(|d| format!("--- {}\n{}", d.db, d.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    demos[0].spawn();
    demos[0].put("k0", "v0");
    for d in &mut demos[1..] {
        d.spawn();
    }
    let servers: String = demos
        .iter()
        .map(|d| d.db.as_str())
        .collect::<Vec<_>>()
        .join(",");
    wait_for("3 voters in the dqlite shell", FORM, || {
        voters(&servers).filter(|v| v.len() == 3)
    });

    // Every process runs on this library, not C dqlite.
    let ours = built_library();
    for d in &demos {
        assert!(
            has_mapped(d.pid(), &ours),
            "{} did not load {}",
            d.db,
            ours.display()
        );
    }

    // Writes through one node are read through the others.
    demos[1].put("k1", "v1");
    demos[2].expect("k1", "v1");
    demos[0].expect("k1", "v1");
    demos[2].expect("k0", "v0");

    // One process dies without a word; the other two keep serving.
    demos[2].kill();
    demos[0].put("k2", "v2");
    demos[1].expect("k2", "v2");

    // Restarted on its directory, it rejoins and catches up.
    demos[2].spawn();
    demos[2].expect("k2", "v2");
    assert!(has_mapped(demos[2].pid(), &ours));
    demos[2].put("k3", "v3");
    demos[0].expect("k3", "v3");
    let members = wait_for("3 voters again", FORM, || {
        voters(&servers).filter(|v| v.len() == 3)
    });
    assert!(
        members.contains(&demos[2].db),
        "{members:?}\n{}",
        logs(&demos)
    );
    eprintln!("voters after the restart: {members:?}");

    // SIGTERM: the demo hands over and closes its node
    // (dqlite_node_stop, dqlite_node_destroy), then exits cleanly.
    let pid = demos[2].pid().to_string();
    let out = run_with_timeout(
        {
            let mut kill = Command::new("kill");
            kill.args(["-TERM", &pid]);
            kill
        },
        Duration::from_secs(10),
    );
    assert!(out.success(), "{}", out.describe());
    let mut child = demos[2].child.take().expect("running");
    let status = support::wait_child(&mut child, FORM);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        logs(&demos)
    );
    demos[1].put("k4", "v4");
    demos[0].expect("k4", "v4");
}
