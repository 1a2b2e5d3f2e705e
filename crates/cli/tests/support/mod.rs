//! Helpers for process-level tests: run real `dqlite-rs node` processes on
//! 127.0.0.1 and drive external programs with bounded waits.
//!
//! Layout:
//! - [`Node`]: a `dqlite-rs node` child on a free loopback port; waits until
//!   the node answers a dqlite LEADER request with its own address; stopped
//!   (SIGTERM, then SIGKILL) on drop.
//! - [`run_with_timeout`]: run a command with optional stdin, capture its
//!   output, kill it if it outlives its deadline.
//! - [`cluster`]: several nodes keeping their port and directory across
//!   kills and restarts; a bootstrapped-and-joined cluster of them.
//!
//! Every wait here is bounded. Nothing talks to anything but 127.0.0.1.

#![allow(dead_code)]

pub mod cluster;
pub mod proxy;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a node may take from spawn to answering LEADER with its address.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL.
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the `dqlite-rs` binary Cargo built for this test run.
pub fn dqlite_rs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dqlite-rs"))
}

// ---------------------------------------------------------------------------
// Ports and the dqlite LEADER probe

/// A loopback port that was free a moment ago (bind to port 0, read, close).
/// Another process can grab it in between; [`Node::start`] retries then.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Connect to `address`, send the dqlite handshake (version 1) and a LEADER
/// request, and return the (id, address) the server reports.
///
/// Written against the wire reference directly (not with crates/wire), so
/// that it checks the server independently of our own codec.
pub fn probe_leader(address: &str, timeout: Duration) -> Result<(u64, String), String> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|e| format!("bad address {address}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    stream.set_nodelay(true).ok();

    let mut request = Vec::with_capacity(24);
    request.extend_from_slice(&1u64.to_le_bytes()); // protocol version 1
    request.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // 1 word, type LEADER (0)
    request.extend_from_slice(&[0; 8]); // unused body word
    stream
        .write_all(&request)
        .map_err(|e| format!("write handshake+LEADER: {e}"))?;

    let mut header = [0u8; 8];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("read response header: {e}"))?;
    let words = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let kind = header[4];
    if words == 0 || words > 1024 {
        return Err(format!("response header {header:02x?}: bad word count"));
    }
    let mut body = vec![0u8; words * 8];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("read response body: {e}"))?;
    match kind {
        1 => {
            if body.len() < 16 {
                return Err(format!("SERVER response too short: {body:02x?}"));
            }
            let id = u64::from_le_bytes(body[0..8].try_into().unwrap());
            let text = &body[8..];
            let end = text
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| format!("SERVER address not NUL-terminated: {body:02x?}"))?;
            let address = String::from_utf8(text[..end].to_vec())
                .map_err(|e| format!("SERVER address not UTF-8: {e}"))?;
            Ok((id, address))
        }
        0 => {
            let code = u64::from_le_bytes(body[0..8].try_into().unwrap());
            let msg = String::from_utf8_lossy(&body[8..]);
            Err(format!(
                "FAILURE response to LEADER: code {code}, {:?}",
                msg.trim_end_matches('\0')
            ))
        }
        other => Err(format!("unexpected response type {other} to LEADER")),
    }
}

// ---------------------------------------------------------------------------
// A dqlite-rs node process

/// A running `dqlite-rs node` child. Stopped on drop.
pub struct Node {
    child: Option<Child>,
    pub id: u64,
    pub address: String,
    pub dir: PathBuf,
    log_path: PathBuf,
    _tmp: TempDir,
}

impl Node {
    /// Start `dqlite-rs node --id ID --address 127.0.0.1:PORT --dir TMP` on a
    /// free port and wait until it reports itself leader at that address.
    /// Retries on a fresh port if the process exits early (e.g. the port was
    /// taken in between). Panics with the node's log on failure.
    pub fn start(id: u64) -> Node {
        Node::start_with(id, &[], &[])
    }

    /// [`Node::start`] with extra `node` arguments and environment.
    pub fn start_with(id: u64, extra_args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut last_error = String::new();
        for attempt in 1..=3 {
            let tmp = tempfile::Builder::new()
                .prefix("dqlite-rs-test-")
                .tempdir()
                .expect("create temp dir");
            let dir = tmp.path().join("data");
            let log_path = tmp.path().join("node.log");
            let address = format!("127.0.0.1:{}", free_port());
            let log = std::fs::File::create(&log_path).expect("create node log");
            let log_err = log.try_clone().expect("clone log handle");
            let child = Command::new(dqlite_rs_bin())
                .args(["node", "--id", &id.to_string(), "--address", &address])
                .arg("--dir")
                .arg(&dir)
                .args(extra_args)
                .envs(env.iter().copied())
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", dqlite_rs_bin().display()));
            let mut node = Node {
                child: Some(child),
                id,
                address,
                dir,
                log_path,
                _tmp: tmp,
            };
            match node.wait_ready(NODE_READY_TIMEOUT) {
                Ok(()) => return node,
                Err(e) => {
                    last_error = format!(
                        "attempt {attempt}: node at {} not ready: {e}\n--- node log ---\n{}",
                        node.address,
                        node.log()
                    );
                    let exited_early = e.starts_with("node exited");
                    drop(node);
                    if !exited_early {
                        break;
                    }
                }
            }
        }
        panic!("{last_error}");
    }

    /// Poll LEADER until the node names itself (its exact `--address`).
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(format!("node exited with {status} before it was ready"));
            }
            match probe_leader(&self.address, Duration::from_secs(2)) {
                Ok((_, ref leader)) if *leader == self.address => return Ok(()),
                Ok((leader_id, leader)) => {
                    last = format!("LEADER answered id {leader_id} address {leader:?}")
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out after {timeout:?}; last probe: {last}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the node wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("<no log at {}: {e}>", self.log_path.display()))
    }

    /// Send `signal` (e.g. "TERM", "INT", "KILL") and wait up to `timeout`
    /// for the node to exit. Returns its exit status, or `None` if it was
    /// still running at the deadline (it is then killed with SIGKILL).
    pub fn stop_with(&mut self, signal: &str, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        send_signal(child.id(), signal);
        match wait_child(&mut child, timeout) {
            Some(status) => Some(status),
            None => {
                let _ = child.kill();
                let _ = wait_child(&mut child, Duration::from_secs(5));
                None
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_with("TERM", NODE_STOP_TIMEOUT);
    }
}

/// Send a signal with the `kill` utility (keeps the tests free of libc).
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Wait for `child` to exit, at most `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Running a command with a deadline

/// What a finished (or killed) command left behind.
#[derive(Debug)]
pub struct Output {
    /// `None` if the command was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// A readable dump for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let status = match self.status {
            Some(status) => status.to_string(),
            None => "killed at its deadline".to_string(),
        };
        let _ = writeln!(s, "status: {status} after {:?}", self.elapsed);
        let _ = writeln!(s, "--- stdout ---\n{}", self.stdout);
        let _ = write!(s, "--- stderr ---\n{}", self.stderr);
        s
    }
}

/// Run `cmd` with `stdin` (closed after writing; `None` = /dev/null),
/// capturing stdout and stderr, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let start = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));

    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        // Ignore EPIPE: the program may exit before reading everything.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });

    let status = match wait_child(&mut child, timeout) {
        Some(status) => Some(status),
        None => {
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(5));
            None
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    // The pipes close when the child is gone (it has no children of its own
    // that keep them open in the cases we run), so these joins end.
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Runs `dqlite-rs ARGS` (bounded at two minutes) and captures its output.
pub fn cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(dqlite_rs_bin());
    cmd.args(args);
    run_with_timeout(cmd, None, Duration::from_secs(120))
}

/// Waits until `dqlite-rs cluster list` on `servers` shows `n` voters.
pub fn wait_voters(servers: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = cli(&["cluster", "-s", servers, "list"]);
        let voters = out.stdout.lines().filter(|l| l.contains("voter")).count();
        if out.success() && voters == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} voters in time: {}",
            out.describe()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A current-thread runtime for a test's client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Our client's settings for tests: a 10 s connect timeout and the given
/// request timeout.
pub fn client_config(request_timeout: Duration) -> dqlite_client::Config {
    let mut c = dqlite_client::Config::default();
    c.connect_timeout = Duration::from_secs(10);
    c.request_timeout = request_timeout;
    c
}

/// Inserts rows `from..from + n` of `blob` random bytes into `t` of `db`
/// through the leader of `servers`; each must be acknowledged.
pub fn insert_rows(servers: &[String], db: &str, from: i64, n: i64, blob: usize) {
    try_insert_rows(servers, db, from, n, blob).unwrap_or_else(|e| panic!("{e}"));
}

/// Like [`insert_rows`], for load that may meet a leader change: the first
/// error is returned, not a panic.
pub fn try_insert_rows(
    servers: &[String],
    db: &str,
    from: i64,
    n: i64,
    blob: usize,
) -> Result<(), String> {
    runtime().block_on(async {
        let mut conn = dqlite_client::Database::connect_with(
            servers,
            db,
            &client_config(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| format!("connect: {e}"))?;
        conn.exec("CREATE TABLE IF NOT EXISTS t (x INTEGER, b BLOB)", ())
            .await
            .map_err(|e| format!("create: {e}"))?;
        for x in from..from + n {
            let sql = format!("INSERT INTO t VALUES ({x}, randomblob({blob}))");
            conn.exec(&sql, ())
                .await
                .map_err(|e| format!("insert {x}: {e}"))?;
        }
        Ok(())
    })
}

/// A hash of node `address`'s own copy of `db` (DUMP needs no leader).
pub fn image_hash(address: &str, db: &str) -> Result<u64, String> {
    use std::hash::{Hash, Hasher};
    runtime().block_on(async {
        let mut c =
            dqlite_client::Client::connect(address, &client_config(Duration::from_secs(30)))
                .await
                .map_err(|e| e.to_string())?;
        let files = c.dump(db).await.map_err(|e| e.to_string())?;
        let main = files.first().ok_or("no files")?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        main.data.hash(&mut h);
        Ok(h.finish())
    })
}

/// `count(*)` and `sum(x)` of `t` in `db`, read on the node at `address`
/// (which must lead).
pub fn totals_on(address: &str, db: &str) -> Result<(i64, i64), String> {
    runtime().block_on(async {
        let client =
            dqlite_client::Client::connect(address, &client_config(Duration::from_secs(30)))
                .await
                .map_err(|e| e.to_string())?;
        let mut conn = client.open(db).await.map_err(|e| e.to_string())?;
        let rows = conn
            .query_all("SELECT count(*), sum(x) FROM t", ())
            .await
            .map_err(|e| e.to_string())?;
        let row = rows.first().ok_or("no row")?;
        Ok((
            row.get::<i64>(0).map_err(|e| e.to_string())?,
            row.get::<i64>(1).map_err(|e| e.to_string())?,
        ))
    })
}

/// The value of the metric line that starts with `name`, from a plain
/// `GET /metrics` on the node's address (0 if it cannot be read).
pub fn metric(address: &str, name: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(address) else {
        return 0;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    if tcp.write_all(request.as_bytes()).is_err() || tcp.read_to_string(&mut body).is_err() {
        return 0;
    }
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
