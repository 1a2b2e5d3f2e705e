//! What the library's process tests share: the built library, loopback
//! addresses, processes with deadlines.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The `libdqlite.so` cargo built for this test binary: the library is a
/// dependency of the tests (its rlib half), so cargo builds the cdylib
/// half next to it in `target/<profile>/deps/`.
pub fn built_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let candidates = [deps.join("libdqlite.so"), deps.join("../libdqlite.so")];
    let lib = candidates.iter().find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "libdqlite.so not found in {}: cargo build -p dqlite-capi",
            deps.display()
        )
    });
    lib.canonicalize().expect("canonical library path")
}

/// A folder holding the built library as `libdqlite.so.0` (what the
/// loader looks for) and `libdqlite.so` (what `-ldqlite` links).
pub fn library_dir(root: &Path) -> PathBuf {
    let dir = root.join("lib");
    std::fs::create_dir_all(&dir).expect("lib dir");
    let lib = built_library();
    for name in ["libdqlite.so.0", "libdqlite.so"] {
        std::os::unix::fs::symlink(&lib, dir.join(name)).expect("symlink the library");
    }
    dir
}

/// A loopback address of its own for this test run, so parallel tests
/// and other programs do not share ports.
pub fn loopback_ip() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = std::process::id().wrapping_mul(7919) ^ nanos;
    format!(
        "127.{}.{}.{}",
        1 + n % 250,
        1 + (n / 250) % 250,
        2 + (n / 62500) % 250
    )
}

/// A port free on `ip` right now.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Calls `f` until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A finished command.
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd`, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Waits for `child` to exit, for at most `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the process `pid` has mapped `file`.
pub fn has_mapped(pid: u32, file: &Path) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|maps| maps.lines().any(|l| l.ends_with(&*file.to_string_lossy())))
        .unwrap_or(false)
}
