//! Multi-node process helpers: `dqlite-rs node` processes that keep their
//! port and data directory across kills and restarts, and a cluster of
//! them on 127.0.0.1. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{dqlite_rs_bin, free_port, probe_leader, send_signal, wait_child};

/// Raft tick for test clusters: elections take 100-200 ms.
pub const LATENCY_MS: u64 = 10;

/// One node process with a fixed address and directory.
pub struct Proc {
    pub address: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// `--network-latency-ms` (default [`LATENCY_MS`]).
    pub latency_ms: u64,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    /// A node at a free loopback port with its data under `root`.
    pub fn new(root: &Path, name: &str, args: &[&str]) -> Proc {
        Proc {
            address: format!("127.0.0.1:{}", free_port()),
            dir: root.join(name),
            log: root.join(format!("{name}.log")),
            args: args.iter().map(|s| s.to_string()).collect(),
            latency_ms: LATENCY_MS,
            child: None,
            starts: 0,
        }
    }

    /// Spawns the process (its log is appended to across restarts).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.address);
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let err = log.try_clone().expect("clone log");
        let child = Command::new(dqlite_rs_bin())
            .args(["node", "--address", &self.address])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--network-latency-ms", &self.latency_ms.to_string()])
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn dqlite-rs node");
        self.child = Some(child);
    }

    /// Waits until the node answers LEADER with a known leader, or has
    /// joined (a spare or standby knows no leader).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "node {} exited with {status}\n{}",
                        self.address,
                        self.read_log()
                    );
                }
            }
            match probe_leader(&self.address, Duration::from_secs(2)) {
                Ok((id, addr)) if id != 0 && !addr.is_empty() => return,
                // Standbys and spares name no leader (as dqlite): a node
                // that has joined is ready all the same.
                Ok(_) if self.read_log().contains("node started") => return,
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "node {} not ready in {timeout:?} (last: {last})\n{}",
            self.address,
            self.read_log()
        );
    }

    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(30));
    }

    /// Waits until the node answers LEADER at all (a node waiting to be
    /// added answers with no leader).
    pub fn wait_answering(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match probe_leader(&self.address, Duration::from_secs(2)) {
                Ok(_) => return,
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "node {} not answering in {timeout:?} (last: {last})\n{}",
            self.address,
            self.read_log()
        );
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), signal);
            if wait_child(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = wait_child(&mut child, Duration::from_secs(5));
            }
        }
    }

    /// Waits (bounded) for the process to exit by itself; its status, or
    /// `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = wait_child(self.child.as_mut()?, timeout)?;
        self.child = None;
        Some(status)
    }

    /// Whether the process has not exited by itself.
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop("KILL");
    }
}

/// Three (or more) nodes: the first bootstraps, the others join it.
pub struct Cluster {
    pub nodes: Vec<Proc>,
    pub root: TempDir,
}

impl Cluster {
    /// Starts `n` nodes with `extra` arguments each.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_with(n, extra, LATENCY_MS)
    }

    /// Like [`Cluster::start`] with another `--network-latency-ms`.
    pub fn start_with(n: usize, extra: &[&str], latency_ms: u64) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("dqlite-rs-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut nodes: Vec<Proc> = Vec::new();
        for i in 0..n {
            let mut args: Vec<&str> = extra.to_vec();
            let join;
            if i > 0 {
                join = nodes[0].address.clone();
                args.extend(["--join", join.as_str()]);
                let mut p = Proc::new(root.path(), &format!("n{}", i + 1), &args);
                p.latency_ms = latency_ms;
                p.start();
                nodes.push(p);
            } else {
                let mut p = Proc::new(root.path(), "n1", &args);
                p.latency_ms = latency_ms;
                p.start();
                nodes.push(p);
            }
        }
        Cluster { nodes, root }
    }

    /// Every address, comma-separated.
    pub fn servers(&self) -> String {
        self.addresses().join(",")
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// The index of the node that a running member names as leader.
    pub fn leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                if let Ok((_, addr)) = probe_leader(&n.address, Duration::from_secs(1)) {
                    if let Some(i) = self
                        .nodes
                        .iter()
                        .position(|m| m.address == addr && m.is_running())
                    {
                        return i;
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("no leader within {timeout:?}\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.address, n.read_log()))
            .collect()
    }
}
