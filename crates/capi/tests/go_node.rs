//! Go programs built with cgo against Debian's go-dqlite sources and
//! linked to this library: go-dqlite's Node API (`dqlite.New` with its
//! options, `Start`, `Close`, `ReconfigureMembershipExt`), and its app with
//! TLS (nodes on abstract Unix sockets behind the app's TLS proxy, peer
//! connections through its connect function).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{built_library, free_port, library_dir, loopback_ip, run_with_timeout};

/// Builds tests/go/`name`.go (given as `source`) into `out_dir`, linked
/// to the built library.
fn build_go(out_dir: &Path, name: &str, source: &str) -> PathBuf {
    let go = Path::new("/usr/bin/go");
    let src = Path::new("/usr/share/gocode/src/github.com/canonical/go-dqlite");
    assert!(
        go.exists() && src.exists() && Path::new("/usr/include/dqlite.h").exists(),
        "apt-get install -y golang-go golang-github-canonical-go-dqlite-dev libdqlite-dev \
         (this test never skips)"
    );
    // One GOPATH, build cache and link folder for every run: the cgo flags
    // are part of Go's cache keys, so a stable -L path lets later builds
    // reuse go-dqlite's cgo objects (Go's cache is safe to share).
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
    let link = work.join("lib");
    std::fs::create_dir_all(&link).expect("go lib dir");
    // Swapped in atomically: the other Go test may be linking right now.
    let fresh = link.join(format!(".libdqlite.so.{name}"));
    let _ = std::fs::remove_file(&fresh);
    std::os::unix::fs::symlink(built_library(), &fresh).expect("symlink");
    std::fs::rename(&fresh, link.join("libdqlite.so")).expect("rename");
    let pkg = work.join("src").join(name);
    std::fs::create_dir_all(&pkg).expect("go dir");
    std::fs::write(pkg.join("main.go"), source).expect("go source");
    let bin = out_dir.join(name);
    let mut cmd = Command::new(go);
    cmd.args(["build", "-o"])
        .arg(&bin)
        .arg(name)
        .env("GOPATH", format!("{}:/usr/share/gocode", work.display()))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", work.join("cache"))
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "1")
        // -ldqlite finds this library first; go-dqlite asks for -z now.
        .env("CGO_LDFLAGS", format!("-L{}", link.display()))
        .env("CGO_LDFLAGS_ALLOW", "-Wl,-z,now");
    let started = std::time::Instant::now();
    let out = run_with_timeout(cmd, Duration::from_secs(600));
    assert!(out.success(), "go build: {}", out.describe());
    eprintln!("go build {name}: {:?}", started.elapsed());
    bin
}

#[test]
fn go_dqlite_node_api_starts_serves_and_recovers() {
    let root = tempfile::tempdir().expect("tempdir");
    let lib = library_dir(root.path());
    let bin = build_go(root.path(), "nodeapi", include_str!("go/nodeapi.go"));
    let ip = loopback_ip();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let (addr_a, addr_b) = (
        format!("{ip}:{}", free_port(&ip)),
        format!("{ip}:{}", free_port(&ip)),
    );
    let mut cmd = Command::new(&bin);
    cmd.arg(&a)
        .arg(&addr_a)
        .arg(&b)
        .arg(&addr_b)
        .env("LD_LIBRARY_PATH", &lib)
        .env("LIBDQLITE_TRACE", "1");
    let out = run_with_timeout(cmd, Duration::from_secs(300));
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    let ours = built_library();
    for wanted in [
        format!("library: {}", ours.display()),
        format!("bind address: {addr_a}"),
        "failure domain: 7".to_string(),
        "voters: 2".to_string(),
        "no quorum before recovery".to_string(),
        "rows after recovery: 3".to_string(),
        "ok".to_string(),
    ] {
        assert!(
            lines.contains(&wanted.as_str()),
            "no {wanted:?} in\n{}",
            out.describe()
        );
    }
    // Peer connections went through the application's dial function.
    let dials: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("peer dials: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dials > 0, "{}", out.describe());
}

#[test]
fn go_dqlite_app_with_tls_runs_its_nodes_on_abstract_sockets() {
    let root = tempfile::tempdir().expect("tempdir");
    let lib = library_dir(root.path());
    let bin = build_go(root.path(), "tlsapp", include_str!("go/tlsapp.go"));
    let ip = loopback_ip();
    let mut cmd = Command::new(&bin);
    cmd.arg(root.path());
    for _ in 0..3 {
        cmd.arg(format!("{ip}:{}", free_port(&ip)));
    }
    cmd.env("LD_LIBRARY_PATH", &lib).env("LIBDQLITE_TRACE", "1");
    let out = run_with_timeout(cmd, Duration::from_secs(300));
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    for wanted in ["voters: 3", "read: over TLS", "ok"] {
        assert!(
            lines.contains(&wanted),
            "no {wanted:?} in\n{}",
            out.describe()
        );
    }
    // The nodes listened on the app's abstract sockets, not on TCP.
    assert!(
        out.stderr.contains("bound=@dqlite-"),
        "no node served an abstract socket:\n{}",
        out.describe()
    );
    // No resumed TLS handshake failed (tlsapp.go avoids Go's binder bug,
    // which failed every other dial and made this test flaky).
    assert!(
        !out.stderr.contains("invalid PSK binder"),
        "go-dqlite's proxy refused a resumed TLS handshake:\n{}",
        out.describe()
    );
}
