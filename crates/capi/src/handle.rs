//! What a `dqlite_node *` points to: the settings gathered before start,
//! the running node with its own tokio runtime, and the last error
//! message. Every method returns a dqlite return code and keeps
//! `errmsg` up to date, as C dqlite does.

use std::ffi::{CStr, CString};
use std::os::raw::c_int;
use std::path::PathBuf;
use std::time::Duration;

use dqlite_node::{Dial, Node, NodeError, NodeInfo, Options};
use tokio::runtime::Runtime;
use tracing::warn;

/// Success.
pub const OK: c_int = 0;
/// Generic error (`DQLITE_ERROR`).
pub const ERROR: c_int = 1;
/// Library used incorrectly (`DQLITE_MISUSE`).
pub const MISUSE: c_int = 2;

/// How long `stop` waits for the runtime's last tasks after the node has
/// closed.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

enum State {
    /// Created, settings may change.
    Created,
    /// Serving on its own runtime.
    Running { runtime: Runtime, node: Box<Node> },
    /// Stopped: only `destroy` (or read-only calls) make sense now.
    Stopped,
}

/// One `dqlite_node`.
pub struct NodeHandle {
    id: u64,
    address: String,
    dir: PathBuf,
    options: Options,
    /// What `dqlite_node_get_bind_address` returns: the requested address
    /// until the node has bound, then the bound one.
    bind_address: Option<CString>,
    errmsg: CString,
    state: State,
}

impl NodeHandle {
    /// A node that will be `id` at `address` with its data in `dir`.
    /// Nothing is touched until `start` (go-dqlite's
    /// `ReconfigureMembershipExt` creates a node only to recover it).
    pub fn new(id: u64, address: &str, dir: &str) -> NodeHandle {
        NodeHandle {
            id,
            address: address.to_string(),
            dir: PathBuf::from(dir),
            // C dqlite manages no roles unless asked: go-dqlite's app
            // does it over the wire.
            options: Options::default().with_role_management(false),
            bind_address: None,
            errmsg: CString::default(),
            state: State::Created,
        }
    }

    /// The last error message ("" if none).
    pub fn errmsg(&self) -> &CStr {
        &self.errmsg
    }

    /// The bind address, if one was set or the node is serving.
    pub fn bind_address(&self) -> Option<&CStr> {
        self.bind_address.as_deref()
    }

    /// Records `message` for `dqlite_node_errmsg` and returns `code`.
    pub fn fail(&mut self, code: c_int, message: impl Into<String>) -> c_int {
        let mut message = message.into();
        message.retain(|c| c != '\0');
        self.errmsg = CString::new(message).unwrap_or_default();
        code
    }

    /// Applies a setting that is only valid before start.
    fn configure(&mut self, what: &str, f: impl FnOnce(&mut Options)) -> c_int {
        if !matches!(self.state, State::Created) {
            return self.fail(MISUSE, format!("{what} must be set before the node starts"));
        }
        f(&mut self.options);
        OK
    }

    /// Listen on `address`: `host:port`, or `@name` for an abstract Unix
    /// socket only this process may connect to (go-dqlite's app behind
    /// its TLS proxy).
    pub fn set_bind_address(&mut self, address: &str) -> c_int {
        if address == "@" {
            return self.fail(
                MISUSE,
                "an abstract socket needs a name: dqlite-rs does not autobind",
            );
        }
        if !address.starts_with('@') && !address.contains(':') {
            return self.fail(MISUSE, format!("invalid bind address {address:?}"));
        }
        let code = self.configure("the bind address", |o| {
            o.bind_address = Some(address.to_string())
        });
        if code == OK {
            self.bind_address = CString::new(address).ok();
        }
        code
    }

    /// Open connections to other nodes with `dial`.
    pub fn set_dial(&mut self, dial: Dial) -> c_int {
        self.configure("the connect function", |o| o.dial = dial)
    }

    /// dqlite accepts at least 500 µs.
    pub fn set_network_latency(&mut self, latency: Duration) -> c_int {
        if latency < Duration::from_micros(500) || latency > Duration::from_secs(3600) {
            return self.fail(
                MISUSE,
                format!("network latency {latency:?} out of range (500us to 1h)"),
            );
        }
        self.configure("the network latency", |o| o.network_latency = latency)
    }

    /// Tag reported by DESCRIBE and used to spread voters.
    pub fn set_failure_domain(&mut self, code: u64) -> c_int {
        self.configure("the failure domain", |o| o.failure_domain = code)
    }

    /// Snapshot every `threshold` entries, keep `trailing` behind it.
    pub fn set_snapshot_params(&mut self, threshold: u64, trailing: u64) -> c_int {
        // As C dqlite: fewer than 4 trailing entries is refused.
        if threshold == 0 || trailing < 4 {
            return self.fail(
                MISUSE,
                format!("invalid snapshot parameters: threshold {threshold}, trailing {trailing}"),
            );
        }
        self.configure("the snapshot parameters", |o| {
            o.snapshot_threshold = threshold;
            o.snapshot_trailing = trailing;
        })
    }

    /// Keep databases on disk.
    pub fn enable_disk_mode(&mut self) -> c_int {
        self.configure("disk mode", |o| o.disk_mode = true)
    }

    /// Set damaged raft files aside at start, or refuse to start.
    pub fn set_auto_recovery(&mut self, on: bool) -> c_int {
        self.configure("auto recovery", |o| o.auto_recovery = on)
    }

    /// Run the role manager (dqlite 1.17's opt-in server-side role
    /// management).
    pub fn enable_role_management(&mut self) -> c_int {
        self.configure("role management", |o| o.role_management = true)
    }

    /// Voters the role manager keeps.
    pub fn set_target_voters(&mut self, n: c_int) -> c_int {
        match usize::try_from(n) {
            Ok(n) if n >= 1 => self.configure("the voters target", |o| o.voters = n),
            _ => self.fail(MISUSE, format!("invalid voters target {n}")),
        }
    }

    /// Standbys the role manager keeps.
    pub fn set_target_standbys(&mut self, n: c_int) -> c_int {
        match usize::try_from(n) {
            Ok(n) => self.configure("the standbys target", |o| o.standbys = n),
            _ => self.fail(MISUSE, format!("invalid standbys target {n}")),
        }
    }

    /// Starts the node on a runtime of its own and returns once it serves.
    pub fn start(&mut self) -> c_int {
        if !matches!(self.state, State::Created) {
            return self.fail(MISUSE, "the node was already started");
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dqlite-rs")
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => return self.fail(ERROR, format!("cannot start the node's threads: {e}")),
        };
        let mut node = Box::new(Node::new(
            self.id,
            self.address.clone(),
            self.dir.clone(),
            self.options.clone(),
        ));
        if let Err(e) = runtime.block_on(node.start()) {
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            return self.fail(ERROR, e.to_string());
        }
        if let Some(bound) = node.bind_address() {
            self.bind_address = CString::new(bound).ok();
        }
        self.id = node.id();
        self.state = State::Running { runtime, node };
        OK
    }

    /// Stops the node and waits until it has stopped.
    pub fn stop(&mut self) -> c_int {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running { runtime, mut node } => {
                let result = runtime.block_on(node.close());
                drop(node);
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
                match result {
                    Ok(()) => OK,
                    Err(e) => self.fail(ERROR, format!("the node did not stop cleanly: {e}")),
                }
            }
            other => {
                self.state = other;
                self.fail(MISUSE, "the node is not running")
            }
        }
    }

    /// Forces the membership of the (stopped) node's directory to `nodes`.
    pub fn recover(&mut self, nodes: &[NodeInfo]) -> c_int {
        if matches!(self.state, State::Running { .. }) {
            return self.fail(MISUSE, "cannot recover a running node");
        }
        match dqlite_node::reconfigure_membership_ext(&self.dir, nodes) {
            Ok(_) => OK,
            Err(e) => self.fail(code_of(&e), e.to_string()),
        }
    }

    /// Index and term of the last entry in the (stopped) node's log.
    pub fn describe_last_entry(&mut self) -> Result<(u64, u64), c_int> {
        if matches!(self.state, State::Running { .. }) {
            return Err(self.fail(MISUSE, "cannot read the log of a running node"));
        }
        match dqlite_node::read_last_entry_info(&self.dir) {
            Ok(info) => Ok((info.index, info.term)),
            Err(e) => Err(self.fail(code_of(&e), e.to_string())),
        }
    }
}

impl Drop for NodeHandle {
    /// `destroy` without `stop`: stop first so the directory is unlocked
    /// and the threads are gone when `destroy` returns.
    fn drop(&mut self) {
        if matches!(self.state, State::Running { .. }) && self.stop() != OK {
            warn!(error = ?self.errmsg, "node destroyed while running did not stop cleanly");
        }
    }
}

fn code_of(e: &NodeError) -> c_int {
    match e {
        NodeError::Misuse(_) | NodeError::NotANode { .. } => MISUSE,
        _ => ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqlite_node::{Role, BOOTSTRAP_ID};

    fn msg(h: &NodeHandle) -> String {
        h.errmsg().to_string_lossy().into_owned()
    }

    #[test]
    fn settings_are_checked_and_frozen_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("n1");
        let mut h = NodeHandle::new(BOOTSTRAP_ID, "127.0.0.1:0", &data.to_string_lossy());
        assert_eq!(h.set_network_latency(Duration::from_micros(499)), MISUSE);
        assert!(msg(&h).contains("out of range"), "{}", msg(&h));
        assert_eq!(h.set_snapshot_params(64, 3), MISUSE);
        assert_eq!(h.set_bind_address("@"), MISUSE);
        assert_eq!(h.set_bind_address("nonsense"), MISUSE);
        assert!(h.bind_address().is_none());
        assert_eq!(h.set_bind_address("127.0.0.1:0"), OK);
        assert_eq!(h.set_network_latency(Duration::from_millis(5)), OK);
        assert_eq!(h.set_snapshot_params(64, 128), OK);
        assert_eq!(h.set_failure_domain(3), OK);
        assert_eq!(h.stop(), MISUSE, "stop before start");

        assert_eq!(h.start(), OK, "{}", msg(&h));
        let bound = h
            .bind_address()
            .expect("bound")
            .to_string_lossy()
            .into_owned();
        assert!(
            bound.starts_with("127.0.0.1:") && !bound.ends_with(":0"),
            "{bound}"
        );
        assert_eq!(h.set_failure_domain(4), MISUSE);
        assert!(msg(&h).contains("before the node starts"), "{}", msg(&h));
        assert_eq!(h.start(), MISUSE);
        assert_eq!(h.describe_last_entry(), Err(MISUSE));
        assert_eq!(h.recover(&[]), MISUSE);

        assert_eq!(h.stop(), OK, "{}", msg(&h));
        assert_eq!(h.stop(), MISUSE);
        let (index, term) = h.describe_last_entry().expect("last entry");
        assert!(index > 0 && term > 0, "{index} {term}");
        let me = NodeInfo::new(BOOTSTRAP_ID, bound.as_str(), Role::Voter);
        assert_eq!(h.recover(&[me]), OK, "{}", msg(&h));
        let (after, _) = h.describe_last_entry().expect("last entry");
        assert!(after > index, "recovery appends a configuration entry");
    }

    #[test]
    fn a_start_that_fails_says_why() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = taken.local_addr().expect("addr").to_string();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = NodeHandle::new(1, &address, &dir.path().join("n").to_string_lossy());
        assert_eq!(h.start(), ERROR);
        assert!(msg(&h).contains(&address), "{}", msg(&h));
    }

    #[test]
    fn recovery_needs_a_node_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = NodeHandle::new(1, "1", &dir.path().to_string_lossy());
        let me = NodeInfo::new(1, "127.0.0.1:9001", Role::Voter);
        assert_ne!(h.recover(&[me]), OK);
        assert!(!msg(&h).is_empty());
    }
}
