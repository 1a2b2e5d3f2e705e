//! The public face of the coordination service: [`Service::start`], `init`,
//! `join`, `exec`, `wait_read`, membership changes, `stop`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::boot;
use crate::core::{Core, CoreConfig, MemberRequest, Outcome, Proposal, ProposeError};
use crate::driver::{self, Command, DriverHandle, Reply, Status};
use crate::membership::{NodeInfo, Role, ServiceCommand};
use crate::persist::{Persister, Stats};
use crate::prepare::{Prepare, PreparedSlot};
use crate::progress::{Progress, ProgressReader};
use crate::storage::{self, Disk, LogOptions, RealDisk, SnapshotInfo, SnapshotStore, StorageError};
use crate::transport::client::{self, full};
use crate::transport::server::{
    BoxFuture, DeliverError, JoinRefusal, JoinRequest, JoinResponse, PeerService,
};
use crate::transport::{Feedback, HttpTransport, RaftHttp, TlsConfig, Transport};
use crate::State;

/// How long a join keeps trying before it gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause between join attempts (they start at 5 ticks).
const JOIN_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long ASSIGN to voter waits for the node to catch up as a standby.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a join that keeps failing logs a summary.
const JOIN_SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Decides a joiner's role from the leader's status (see
/// [`Config::join_role`]).
pub type JoinRole = Arc<dyn Fn(&Status) -> Role + Send + Sync>;

/// Service settings.
#[derive(Clone)]
pub struct Config {
    /// Raft id (0: `init` uses 1, `join` lets the cluster allocate one).
    pub id: u64,
    /// Address peers reach this node on (`host:0` picks a port at start).
    pub address: String,
    /// Data directory (raft files live in `<data_dir>/raft`).
    pub data_dir: PathBuf,
    /// One-way network latency; the tick. Heartbeat is 2 ticks, the
    /// election timeout 10 to 20 ticks.
    pub network_latency: Duration,
    /// Snapshot after this many applied entries.
    pub snapshot_threshold: u64,
    /// Entries kept behind a snapshot.
    pub snapshot_trailing: u64,
    /// Preallocated log segment size.
    pub segment_size: u64,
    /// Set damaged log or snapshot files aside instead of failing.
    pub auto_recovery: bool,
    /// Mutual TLS between peers.
    pub tls: Option<TlsConfig>,
    /// Opens every connection to a peer (raft traffic, snapshots, joins);
    /// TLS, if any, runs over it. Default: TCP.
    pub dial: dqlite_client::Dial,
    /// This node's failure domain, recorded in the registry when it
    /// bootstraps or joins.
    pub failure_domain: u64,
    /// The role a joiner gets, decided by the leader from its status
    /// (`None`: every joiner becomes a voter once caught up).
    pub join_role: Option<JoinRole>,
    /// Run our own listener on `address` (false: the embedder hands
    /// connections to [`Service::http`] itself).
    pub listen: bool,
    /// The disk (the simulator substitutes its own).
    pub disk: Arc<dyn Disk>,
    /// Read leases ([`crate::lease`]): a leader answers read barriers
    /// without a round trip for a while after a quorum acknowledged one.
    /// Every node of the cluster must run with it: a follower's promise
    /// not to vote for a while is what the lease rests on, and only a node
    /// with leases on keeps that promise across its own restart. Off by
    /// default: it assumes clocks that run at about the same rate and never
    /// stop while the machine is suspended.
    pub read_lease: bool,
}

impl Config {
    /// Defaults for a node at `address` storing data in `data_dir`.
    pub fn new(address: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Config {
            id: 0,
            address: address.into(),
            data_dir: data_dir.into(),
            network_latency: Duration::from_millis(20),
            snapshot_threshold: 1024,
            snapshot_trailing: 8192,
            segment_size: 8 << 20,
            auto_recovery: false,
            tls: None,
            dial: dqlite_client::Dial::tcp(),
            failure_domain: 0,
            join_role: None,
            listen: true,
            disk: Arc::new(RealDisk),
            read_lease: false,
        }
    }

    fn raft_dir(&self) -> PathBuf {
        storage::raft_dir(&self.data_dir)
    }

    fn core_config(&self, id: u64) -> CoreConfig {
        const ELECTION_TICK: usize = 10;
        CoreConfig {
            id,
            election_tick: ELECTION_TICK,
            heartbeat_tick: 2,
            // Clock rates may differ by 10 %: NTP slews by at most 0.05 %.
            read_lease: self
                .read_lease
                .then(|| crate::lease::span(self.network_latency, ELECTION_TICK, 1.1)),
            snapshot_threshold: self.snapshot_threshold,
            snapshot_trailing: self.snapshot_trailing,
            ..CoreConfig::new(id)
        }
    }
}

/// Service errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `init` or `join` on a node that already belongs to a cluster.
    #[error("already part of a cluster")]
    ExistingCluster,
    /// The node has not been initialized or joined.
    #[error("no cluster configured: call init or join")]
    Uninitialized,
    /// The joiner's address is not on the allowed-member list.
    #[error("address not allowed to join")]
    AddressNotAllowed,
    /// No member with that address.
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// This node is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's address when known.
        leader: Option<String>,
    },
    /// Leadership changed while the entry was in flight: outcome unknown.
    #[error("leadership lost, outcome unknown")]
    LeadershipLost,
    /// Raft dropped the proposal.
    #[error("proposal dropped")]
    Dropped,
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// The command queue is full.
    #[error("busy: too many requests in flight")]
    Busy,
    /// The service stopped.
    #[error("service stopped")]
    Stopped,
    /// The disk is failing; writes are refused until it recovers.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The disk is full; writes are refused until space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Another membership change is in progress.
    #[error("another membership change is in progress")]
    ConfChangeInProgress,
    /// A membership request is invalid.
    #[error("invalid membership change: {0}")]
    InvalidChange(String),
    /// ASSIGN to voter of a node that is reachable but has not caught up
    /// yet: it stays a standby and becomes a voter once it has.
    #[error(
        "node {id} ({address}) is still catching up after {seconds} s: it stays a standby \
         and becomes a voter once it has caught up"
    )]
    StillCatchingUp {
        /// The node.
        id: u64,
        /// Its address.
        address: String,
        /// How long the leader waited.
        seconds: u64,
    },
    /// ASSIGN to voter of a node that did not catch up in time.
    #[error(
        "node {id} ({address}) did not catch up within {seconds} s, so it was not made a \
         voter; the voter set is unchanged (is it running and reachable?)"
    )]
    NotCaughtUp {
        /// The node.
        id: u64,
        /// Its address.
        address: String,
        /// How long the leader waited.
        seconds: u64,
    },
    /// Joining failed.
    #[error("join failed: {0}")]
    Join(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A damaged file was found at start with auto-recovery off.
    #[error(
        "{0}; auto-recovery is off: start the node with auto-recovery (without \
         --no-auto-recovery) to set the damaged file aside and catch up from the other \
         nodes, or restore the data directory from a backup"
    )]
    CorruptAtStart(StorageError),
    /// The consensus core failed.
    #[error("consensus failed: {0}")]
    Core(String),
    /// Network setup failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
}

impl Error {
    fn from_propose(e: ProposeError, status: &Status) -> Self {
        match e {
            ProposeError::NotLeader(id) => Error::NotLeader {
                leader: status.cluster.nodes.get(&id).map(|n| n.address.clone()),
            },
            ProposeError::Dropped => Error::Dropped,
            ProposeError::LeadershipLost => Error::LeadershipLost,
            ProposeError::ConfChangeInProgress => Error::ConfChangeInProgress,
            ProposeError::InvalidChange(s) => Error::InvalidChange(s),
            ProposeError::ReadTimeout => Error::Timeout,
            ProposeError::Failed(s) => Error::Core(s),
            ProposeError::StorageUnavailable(s) => Error::StorageUnavailable(s),
            ProposeError::DiskFull(s) => Error::DiskFull(s),
        }
    }
}

enum StartMode {
    Restart,
    Init(u64),
    Join(u64, Vec<NodeInfo>),
}

type Starter = Box<dyn FnOnce(&Inner, StartMode) -> Result<DriverHandle, Error> + Send>;

struct Inner {
    config: Config,
    driver: Mutex<Option<DriverHandle>>,
    starter: Mutex<Option<Starter>>,
    status: watch::Sender<Status>,
    snapshots: SnapshotStore,
    runtime: tokio::runtime::Handle,
    shutdown: tokio::sync::Notify,
    /// Log writer and snapshot statistics, kept across driver starts.
    stats: Arc<Stats>,
    /// Rebuilds the State from a received snapshot off the driver thread.
    preparer: Mutex<Option<Arc<dyn Prepare>>>,
    /// What the preparer built, for the core to swap in.
    prepared: PreparedSlot,
}

/// A running coordination service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

// std Mutex: held briefly, never across an await.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    /// Starts the service. With an existing raft directory the node rejoins
    /// its cluster; otherwise it waits for [`Service::init`] or
    /// [`Service::join`].
    pub async fn start<S: State>(mut config: Config, state: S) -> Result<Service, Error> {
        let listener = if config.listen {
            let l = TcpListener::bind(&config.address).await?;
            if config.address.ends_with(":0") {
                config.address = l.local_addr()?.to_string();
            }
            Some(l)
        } else {
            None
        };
        let raft_dir = config.raft_dir();
        config
            .disk
            .create_dir_all(&raft_dir)
            .map_err(|e| StorageError::io(&raft_dir, e))?;
        let snapshots = SnapshotStore::new(config.disk.clone(), &raft_dir)?;
        let member = match storage::meta::read_meta(config.disk.as_ref(), &raft_dir) {
            Ok(meta) => meta.is_some_and(|m| m.id != 0),
            // Start-up sets the damaged file aside and rebuilds it.
            Err(StorageError::Corrupt { .. }) if config.auto_recovery => true,
            Err(e @ StorageError::Corrupt { .. }) => return Err(Error::CorruptAtStart(e)),
            Err(e) => return Err(e.into()),
        };
        let server_tls = config
            .tls
            .as_ref()
            .map(TlsConfig::server_config)
            .transpose()?;
        let (status, _) = watch::channel(Status::default());
        let starter: Starter =
            Box::new(move |inner: &Inner, mode| start_driver(inner, mode, state));
        let inner = Arc::new(Inner {
            config,
            driver: Mutex::new(None),
            starter: Mutex::new(Some(starter)),
            status,
            snapshots,
            runtime: tokio::runtime::Handle::current(),
            shutdown: tokio::sync::Notify::new(),
            stats: Arc::default(),
            preparer: Mutex::new(None),
            prepared: PreparedSlot::default(),
        });
        let service = Service { inner };
        if let Some(listener) = listener {
            let http = RaftHttp::new(Arc::new(service.clone()), server_tls);
            let svc = service.clone();
            tokio::spawn(async move {
                crate::transport::server::serve(listener, http, svc.inner.shutdown.notified())
                    .await;
            });
        }
        if member {
            service.launch(StartMode::Restart).await?;
        }
        Ok(service)
    }

    async fn launch(&self, mode: StartMode) -> Result<(), Error> {
        let starter = lock(&self.inner.starter)
            .take()
            .ok_or(Error::ExistingCluster)?;
        let inner = self.inner.clone();
        let handle = tokio::task::spawn_blocking(move || starter(&inner, mode))
            .await
            .map_err(|e| Error::Core(e.to_string()))??;
        *lock(&self.inner.driver) = Some(handle);
        Ok(())
    }

    /// The address this node is reachable on.
    pub fn address(&self) -> &str {
        &self.inner.config.address
    }

    /// The `/raft/` HTTP handler, for an embedder that accepts connections
    /// itself (see [`crate::transport::serve_connection`]).
    pub fn http(&self) -> RaftHttp {
        let tls = self
            .inner
            .config
            .tls
            .as_ref()
            .and_then(|t| t.server_config().ok());
        RaftHttp::new(Arc::new(self.clone()), tls)
    }

    /// Bootstraps a new one-node cluster with this node as its only voter.
    pub async fn init(&self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::ExistingCluster);
        }
        let id = if self.inner.config.id == 0 {
            1
        } else {
            self.inner.config.id
        };
        self.launch(StartMode::Init(id)).await?;
        self.send(Command::Campaign)?;
        Ok(())
    }

    /// Joins the cluster through any member at `boot_address`.
    pub async fn join(&self, boot_address: &str) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::ExistingCluster);
        }
        let tls = self.peer_tls()?;
        let request = JoinRequest {
            address: self.inner.config.address.clone(),
            id: self.inner.config.id,
            failure_domain: self.inner.config.failure_domain,
            weight: 0,
        };
        let body = serde_json::to_vec(&request).map_err(|e| Error::Join(e.to_string()))?;
        let started = Instant::now();
        let deadline = started + JOIN_TIMEOUT;
        let mut target = boot_address.to_string();
        // Retries back off, and the log gets the first failure and then a
        // summary now and then, not a line per attempt.
        let mut delay = self.inner.config.network_latency * 5;
        let mut failures = 0u32;
        let mut last_error = String::new();
        let mut next_summary = started + JOIN_SUMMARY_EVERY;
        // Bounded by the deadline and the attempt count.
        for _ in 0..200 {
            if Instant::now() > deadline {
                break;
            }
            let attempt = async {
                let mut conn =
                    client::connect(&target, &self.inner.config.dial, tls.as_ref()).await?;
                client::request(&mut conn, &target, "/raft/join", &[], full(body.clone())).await
            };
            match attempt.await {
                Ok((status, bytes)) if status.is_success() => {
                    let resp: JoinResponse =
                        serde_json::from_slice(&bytes).map_err(|e| Error::Join(e.to_string()))?;
                    info!(id = resp.id, via = %target, "joined cluster");
                    self.launch(StartMode::Join(resp.id, resp.nodes)).await?;
                    return Ok(());
                }
                Ok((_, bytes)) => {
                    let refusal: JoinRefusal = serde_json::from_slice(&bytes)
                        .map_err(|_| Error::Join(String::from_utf8_lossy(&bytes).into_owned()))?;
                    match refusal.code.as_str() {
                        "not_allowed" => return Err(Error::AddressNotAllowed),
                        "id_in_use" => return Err(Error::Join(refusal.message)),
                        "not_leader" => {
                            if let Some(leader) = refusal.leader {
                                target = leader;
                                continue;
                            }
                        }
                        _ => {}
                    }
                    last_error = format!("refused ({}): {}", refusal.code, refusal.message);
                }
                Err(e) => last_error = e.to_string(),
            }
            failures += 1;
            if failures == 1 {
                warn!(via = %target, error = %last_error, "cannot join yet; retrying");
            } else if Instant::now() >= next_summary {
                warn!(
                    via = %target,
                    attempts = failures,
                    seconds = started.elapsed().as_secs(),
                    last_error = %last_error,
                    "still cannot join; retrying"
                );
                next_summary = Instant::now() + JOIN_SUMMARY_EVERY;
            } else {
                debug!(via = %target, error = %last_error, "join attempt failed");
            }
            tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
            delay = (delay * 2).min(JOIN_RETRY_MAX);
        }
        Err(Error::Join(format!(
            "no member at {boot_address} accepted the join within {} s \
             ({failures} attempts; last: {last_error})",
            JOIN_TIMEOUT.as_secs()
        )))
    }

    /// The TLS client configuration for requests to other members, if TLS
    /// is on.
    fn peer_tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, Error> {
        Ok(self
            .inner
            .config
            .tls
            .as_ref()
            .map(TlsConfig::client_config)
            .transpose()?)
    }

    fn is_running(&self) -> bool {
        lock(&self.inner.driver).is_some()
    }

    fn send(&self, c: Command) -> Result<(), Error> {
        self.try_send(c).map_err(|refused| refused.0)
    }

    /// Like [`Service::send`], and a command that was not taken comes back.
    fn try_send(&self, c: Command) -> Result<(), Box<(Error, Command)>> {
        let guard = lock(&self.inner.driver);
        let Some(d) = guard.as_ref() else {
            return Err(Box::new((Error::Uninitialized, c)));
        };
        d.commands.try_send(c).map_err(|e| {
            Box::new(match e {
                crossbeam_channel::TrySendError::Full(c) => (Error::Busy, c),
                crossbeam_channel::TrySendError::Disconnected(c) => (Error::Stopped, c),
            })
        })
    }

    /// Proposes and waits until applied here (or the deadline).
    pub async fn propose(&self, proposal: Proposal, timeout: Duration) -> Result<Outcome, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Propose(proposal, Reply::Channel(tx)))?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Stopped),
            Ok(Ok(Ok(outcome))) => Ok(outcome),
            Ok(Ok(Err(e))) => Err(Error::from_propose(e, &self.status())),
        }
    }

    /// Hands `instruction` to the log without waiting for it: calls made
    /// one after another reach the log in that order, so a caller can keep
    /// many in flight. `done` is called on the driver thread, so it must
    /// not block, once the instruction is applied here (whether the State
    /// found it satisfied) or has failed: always exactly once, at the
    /// latest when leadership is lost or the service stops. An instruction
    /// the service cannot take is answered at once, on the caller's thread.
    pub fn submit(
        &self,
        instruction: Vec<u8>,
        done: impl FnOnce(Result<bool, Error>) + Send + 'static,
    ) {
        let done: Box<dyn FnOnce(Result<bool, Error>) + Send> = Box::new(done);
        let reply = Reply::Call(Box::new(move |r: Result<Outcome, ProposeError>| {
            // The leader's address is not needed: callers only tell errors
            // apart by kind.
            done(
                r.map(|o| o.satisfied)
                    .map_err(|e| Error::from_propose(e, &Status::default())),
            )
        }));
        if let Err(refused) = self.try_send(Command::Propose(Proposal::State(instruction), reply)) {
            // What comes back is the Propose just sent.
            let (e, Command::Propose(_, reply)) = *refused else {
                return;
            };
            let refused = match e {
                Error::Uninitialized => ProposeError::NotLeader(0),
                other => ProposeError::Failed(other.to_string()),
            };
            reply.send(Err(refused));
        }
    }

    /// Replicates `instruction` and returns whether the State found it
    /// satisfied. Only the leader accepts; a dropped proposal or lost
    /// leadership is an error, never a hang.
    pub async fn exec(&self, instruction: Vec<u8>, timeout: Duration) -> Result<bool, Error> {
        Ok(self
            .propose(Proposal::State(instruction), timeout)
            .await?
            .satisfied)
    }

    /// Linearizable read barrier: returns once the State reflects every
    /// write acknowledged before the call. Concurrent callers share one
    /// ReadIndex round.
    pub async fn wait_read(&self, timeout: Duration) -> Result<(), Error> {
        let leased = self.inner.status.borrow().lease_until;
        if leased.is_some_and(|until| Instant::now() < until) {
            // No other leader can exist yet, and this one applied every
            // write it acknowledged: nothing newer can have been acknowledged.
            self.inner.stats.lease_reads.inc();
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let pause = self.inner.config.network_latency;
        loop {
            let (tx, rx) = oneshot::channel();
            self.send(Command::Read(tx))?;
            let left = deadline.saturating_duration_since(Instant::now());
            let result = match tokio::time::timeout(left, rx).await {
                Err(_) => return Err(Error::Timeout),
                Ok(Err(_)) => return Err(Error::Stopped),
                Ok(Ok(r)) => r,
            };
            match result {
                Ok(_) => return Ok(()),
                Err(ProposeError::ReadTimeout) | Err(ProposeError::NotLeader(0)) => {
                    if Instant::now() + pause >= deadline {
                        return Err(Error::Timeout);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(Error::from_propose(e, &self.status())),
            }
        }
    }

    /// Proposes a membership change, retrying while another is in progress.
    async fn change_member(&self, req: MemberRequest, timeout: Duration) -> Result<Outcome, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.propose(Proposal::Member(req.clone()), left).await {
                Err(Error::ConfChangeInProgress) | Err(Error::LeadershipLost)
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(self.inner.config.network_latency).await;
                }
                other => return other,
            }
        }
    }

    /// Removes the member at `address` from the cluster.
    pub async fn evict(&self, address: &str) -> Result<(), Error> {
        self.wait_read(Duration::from_secs(5)).await?;
        let node = self
            .status()
            .cluster
            .by_address(address)
            .cloned()
            .ok_or_else(|| Error::UnknownPeer(address.to_string()))?;
        self.change_member(MemberRequest::Remove(node.id), Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// Changes a member's role (voter, standby or spare). A node becomes a
    /// voter only after catching up as a standby. If it has not within
    /// [`PROMOTE_TIMEOUT`]: a node the leader still hears from stays a
    /// standby and is promoted once caught up ([`Error::StillCatchingUp`]);
    /// one it does not hear from gets its previous role back
    /// ([`Error::NotCaughtUp`]). The voter set is unchanged either way.
    pub async fn set_role(&self, address: &str, role: Role) -> Result<(), Error> {
        let mut node = self
            .status()
            .cluster
            .by_address(address)
            .cloned()
            .ok_or_else(|| Error::UnknownPeer(address.to_string()))?;
        if role != Role::Voter || node.role == Role::Voter {
            node.role = role;
            return self
                .change_member(MemberRequest::Set(node), Duration::from_secs(10))
                .await
                .map(|_| ());
        }
        let previous = node.clone();
        self.change_member(MemberRequest::Learner(node), Duration::from_secs(10))
            .await?;
        let id = previous.id;
        let mut rx = self.watch();
        let promoted = tokio::time::timeout(
            PROMOTE_TIMEOUT,
            rx.wait_for(|s| {
                s.cluster
                    .nodes
                    .get(&id)
                    .is_some_and(|n| n.role == Role::Voter)
            }),
        )
        .await
        .map(|r| r.map(|_| ()));
        match promoted {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                let status = self.status();
                let standby = status.cluster.nodes.get(&id).map(|n| n.role) == Some(Role::StandBy);
                // Reachable and still catching up (a large snapshot takes
                // longer than the wait): putting it back would throw away
                // what it has received, and the next attempt would start
                // over. It stays a standby and is promoted once caught up.
                if standby && status.progress.get(&id).is_some_and(|(_, online)| *online) {
                    return Err(Error::StillCatchingUp {
                        id,
                        address: previous.address,
                        seconds: PROMOTE_TIMEOUT.as_secs(),
                    });
                }
                // Put it back as it was (a spare leaves raft again), unless
                // the promotion landed meanwhile.
                if standby {
                    if let Err(e) = self
                        .change_member(
                            MemberRequest::Set(previous.clone()),
                            Duration::from_secs(10),
                        )
                        .await
                    {
                        warn!(id, error = %e, "cannot restore the role of a node that did not catch up");
                    }
                }
                Err(Error::NotCaughtUp {
                    id,
                    address: previous.address,
                    seconds: PROMOTE_TIMEOUT.as_secs(),
                })
            }
        }
    }

    /// Adds (or updates) a member with the role it carries, retrying while
    /// another membership change is in progress. A voter is added cold:
    /// use [`Service::set_role`] to promote a node safely.
    pub async fn set_member(&self, node: NodeInfo) -> Result<(), Error> {
        self.change_member(MemberRequest::Set(node), Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// Sets a member's failure domain and weight in the registry. Only the
    /// leader accepts.
    pub async fn set_metadata(
        &self,
        id: u64,
        failure_domain: u64,
        weight: u64,
    ) -> Result<(), Error> {
        let mut node = self
            .status()
            .cluster
            .nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::UnknownPeer(format!("id {id}")))?;
        if (node.failure_domain, node.weight) == (failure_domain, weight) {
            return Ok(());
        }
        node.failure_domain = failure_domain;
        node.weight = weight;
        let cmd = ServiceCommand::SetMember(crate::membership::MemberChange::Set(node));
        self.propose(Proposal::Service(cmd), Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// Adds an address to the allowed-member list.
    pub async fn allow_member(&self, address: &str) -> Result<(), Error> {
        let cmd = ServiceCommand::Allow(address.to_string());
        self.propose(Proposal::Service(cmd), Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// Turns the allowed-member check on or off.
    pub async fn set_allowlist(&self, enabled: bool) -> Result<(), Error> {
        let cmd = ServiceCommand::SetAllowlist(enabled);
        self.propose(Proposal::Service(cmd), Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// Records this node's failure domain and weight in the replicated
    /// registry: directly on the leader, otherwise through the leader's
    /// `/raft/join` endpoint (which updates a known member's metadata).
    pub async fn publish_metadata(&self, failure_domain: u64, weight: u64) -> Result<(), Error> {
        let status = self.status();
        if status.is_leader {
            return self.set_metadata(status.id, failure_domain, weight).await;
        }
        let (_, leader) = self.leader().ok_or(Error::NotLeader { leader: None })?;
        let tls = self.peer_tls()?;
        let request = JoinRequest {
            address: self.inner.config.address.clone(),
            id: status.id,
            failure_domain,
            weight,
        };
        let body = serde_json::to_vec(&request).map_err(|e| Error::Join(e.to_string()))?;
        let attempt = async {
            let mut conn = client::connect(&leader, &self.inner.config.dial, tls.as_ref()).await?;
            client::request(&mut conn, &leader, "/raft/join", &[], full(body)).await
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(e)) => Err(Error::Join(e.to_string())),
            Ok(Ok((code, _))) if code.is_success() => Ok(()),
            Ok(Ok((_, bytes))) => Err(Error::Join(String::from_utf8_lossy(&bytes).into_owned())),
        }
    }

    /// Hands leadership to node `to` and waits until it leads.
    pub async fn transfer_leadership(&self, to: u64, timeout: Duration) -> Result<(), Error> {
        self.send(Command::TransferLeader(to))?;
        let mut rx = self.watch();
        let result = tokio::time::timeout(timeout, rx.wait_for(|s| s.leader == to))
            .await
            .map(|r| r.map(|_| ()));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The latest status (leader, term, members, indexes, errors).
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// A channel that changes whenever the status does (leadership changes
    /// included).
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// The leader's id and address, when known.
    pub fn leader(&self) -> Option<(u64, String)> {
        let s = self.status();
        s.cluster
            .nodes
            .get(&s.leader)
            .map(|n| (n.id, n.address.clone()))
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.inner.status.borrow().is_leader
    }

    /// Whether this node leads and has applied an entry of its own term,
    /// so that a read served from its state and then confirmed by
    /// [`Service::wait_read`] is linearizable.
    pub fn caught_up_in_term(&self) -> bool {
        self.inner.status.borrow().caught_up_in_term
    }

    /// The members (id, address, role) as applied here.
    pub fn membership(&self) -> Vec<NodeInfo> {
        self.status().cluster.nodes.values().cloned().collect()
    }

    /// The latest persistent error, if any (clears when it recovers).
    pub fn err(&self) -> Option<String> {
        self.status().error
    }

    /// Entries written and fsyncs issued so far (group-commit ratio).
    pub fn io_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.inner.stats;
        (stats.entries.load(Relaxed), stats.syncs.load(Relaxed))
    }

    /// The log writer's and snapshots' statistics (fsync latency, entries
    /// per fsync, snapshot counts and durations), for metrics.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.inner.stats)
    }

    /// Stops the node: the raft loop, the log writer (queued writes are
    /// finished) and the listener.
    pub async fn stop(&self) {
        self.inner.shutdown.notify_waiters();
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Stop(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(15), rx).await;
        }
        let handle = lock(&self.inner.driver).take();
        if let Some(mut h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    async fn serve_join(self, req: JoinRequest) -> Result<JoinResponse, JoinRefusal> {
        let refuse = |code: &str, message: String, leader: Option<String>| JoinRefusal {
            code: code.to_string(),
            message,
            leader,
        };
        if !self.is_running() {
            return Err(refuse(
                "uninitialized",
                "this node has no cluster".into(),
                None,
            ));
        }
        let status = self.status();
        if !status.is_leader {
            let leader = status
                .cluster
                .nodes
                .get(&status.leader)
                .map(|n| n.address.clone());
            return Err(refuse("not_leader", "ask the leader".into(), leader));
        }
        let unavailable = |e: Error| refuse("unavailable", e.to_string(), None);
        self.wait_read(Duration::from_secs(5))
            .await
            .map_err(unavailable)?;
        let status = self.status();
        if let Some(node) = status.cluster.by_address(&req.address) {
            // A member publishing its metadata (`publish_metadata`).
            if req.id == node.id
                && (req.failure_domain, req.weight) != (node.failure_domain, node.weight)
            {
                self.set_metadata(node.id, req.failure_domain, req.weight)
                    .await
                    .map_err(unavailable)?;
            }
            // Idempotent: a joiner retrying after a lost answer.
            return Ok(JoinResponse {
                id: node.id,
                nodes: status.cluster.nodes.values().cloned().collect(),
            });
        }
        // Checked before an id is allocated, so refused joins burn none.
        if !status.cluster.is_allowed(&req.address) {
            return Err(refuse(
                "not_allowed",
                format!("{} is not allowed", req.address),
                None,
            ));
        }
        let id = if req.id != 0 {
            if status.cluster.nodes.contains_key(&req.id) {
                return Err(refuse("id_in_use", format!("id {} is taken", req.id), None));
            }
            req.id
        } else {
            let outcome = self
                .propose(
                    Proposal::Service(ServiceCommand::AllocateId),
                    Duration::from_secs(5),
                )
                .await
                .map_err(unavailable)?;
            outcome
                .value
                .ok_or_else(|| refuse("unavailable", "no id allocated".into(), None))?
        };
        let role = match &self.inner.config.join_role {
            Some(decide) => decide(&self.status()),
            None => Role::Voter,
        };
        let node = NodeInfo {
            id,
            address: req.address.clone(),
            role,
            failure_domain: req.failure_domain,
            weight: req.weight,
        };
        // A voter-to-be joins as a standby and is promoted once caught up.
        let request = if role == Role::Voter {
            MemberRequest::Learner(node)
        } else {
            MemberRequest::Set(node)
        };
        self.change_member(request, Duration::from_secs(10))
            .await
            .map_err(unavailable)?;
        info!(id, address = %req.address, ?role, "node joined");
        Ok(JoinResponse {
            id,
            nodes: self.status().cluster.nodes.values().cloned().collect(),
        })
    }
}

impl PeerService for Service {
    fn deliver(&self, messages: Vec<Message>) -> Result<(), DeliverError> {
        {
            // Only the leader answers "removed": its registry is the one
            // every committed change reached first. A node being added is
            // in it before it ever talks raft; spares never do.
            let status = self.inner.status.borrow();
            if status.is_leader
                && messages.iter().any(|m| {
                    m.from != 0
                        && m.from != status.id
                        && !status.cluster.nodes.contains_key(&m.from)
                })
            {
                return Err(DeliverError::SenderRemoved);
            }
        }
        let guard = lock(&self.inner.driver);
        let d = guard
            .as_ref()
            .ok_or(DeliverError::Unavailable("not initialized"))?;
        for m in messages {
            // Full queue: drop; raft retransmits.
            let _ = d.peer_messages.try_send(m);
        }
        Ok(())
    }

    fn snapshots(&self) -> Option<SnapshotStore> {
        self.is_running().then(|| self.inner.snapshots.clone())
    }

    fn prepare_snapshot(&self, info: &SnapshotInfo) -> Result<(), String> {
        let Some(preparer) = lock(&self.inner.preparer).clone() else {
            return Ok(());
        };
        let _one = self.inner.prepared.one_at_a_time();
        let (index, term) = (info.header.index, info.header.term);
        let progress = Progress::start(
            format!(
                "installing snapshot {index} (term {term}) from the leader, off the driver thread"
            ),
            "bytes",
            Some(info.size),
        );
        let reader = self
            .inner
            .snapshots
            .state_reader(info)
            .map_err(|e| e.to_string())?;
        let mut reader = ProgressReader::new(reader, progress);
        let prepared = preparer
            .prepare(index, &mut reader)
            .map_err(|e| e.to_string())?;
        reader.finish();
        self.inner.prepared.put(term, index, prepared);
        Ok(())
    }

    fn join(&self, request: JoinRequest) -> BoxFuture<Result<JoinResponse, JoinRefusal>> {
        Box::pin(self.clone().serve_join(request))
    }

    fn adopt(&self, from: u64, address: String, to: u64) -> BoxFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let id = this.inner.config.id;
            if this.is_running() {
                if from != 0 && this.inner.status.borrow().fenced {
                    let _ = this.try_send(Command::LearnPeer(from, address));
                }
                return;
            }
            // Only a node started with its own id and no cluster waits to
            // be added; messages for another id are not for it.
            if id == 0 || to != id || from == 0 {
                return;
            }
            let leader = NodeInfo::new(from, address.clone(), Role::Voter);
            match this.launch(StartMode::Join(id, vec![leader])).await {
                Ok(()) => info!(id, via = %address, "added to a cluster: replicating"),
                // Another message got here first.
                Err(Error::ExistingCluster) => {}
                Err(e) => warn!(id, error = %e, "cannot start replicating"),
            }
        })
    }
}

fn start_driver<S: State>(inner: &Inner, mode: StartMode, state: S) -> Result<DriverHandle, Error> {
    let config = &inner.config;
    let raft_dir = config.raft_dir();
    let disk = config.disk.clone();
    let mut seed_peers = Vec::new();
    match &mode {
        StartMode::Restart => {}
        StartMode::Init(id) => {
            let me = NodeInfo {
                failure_domain: config.failure_domain,
                ..NodeInfo::new(*id, config.address.clone(), Role::Voter)
            };
            boot::bootstrap_cluster(disk.clone(), &raft_dir, *id, &[me], &state)?
        }
        StartMode::Join(id, nodes) => {
            boot::write_identity(disk.as_ref(), &raft_dir, *id, 0)?;
            seed_peers = nodes.iter().map(|n| (n.id, n.address.clone())).collect();
        }
    }
    let options = LogOptions {
        segment_size: config.segment_size,
        auto_recovery: config.auto_recovery,
    };
    // A State that keeps its data on disk knows how far it applied: those
    // entries are committed, so their payloads may stay on disk at load.
    let mut opened = boot::open_for_state(
        disk,
        &raft_dir,
        options,
        storage::mem::DEFAULT_LOG_CACHE_BYTES,
        state.applied_index(),
    )
    .map_err(|e| match e {
        StorageError::Corrupt { .. } if !config.auto_recovery => Error::CorruptAtStart(e),
        e => Error::Storage(e),
    })?;
    for path in &opened.report.set_aside {
        warn!(path = %path.display(), "set aside by auto-recovery");
    }
    let mut st = opened.meta.state();
    if st.id == 0 && config.id != 0 && !matches!(mode, StartMode::Join(..)) {
        // Auto-recovery rebuilt a damaged hard-state file: the id comes
        // back from the node's own record.
        st.id = config.id;
        let meta = raft_dir.join("meta");
        opened
            .meta
            .write(st)
            .and_then(|()| opened.meta.sync())
            .map_err(|e| storage::StorageError::io(&meta, e))?;
    }
    let id = st.id;
    if id == 0 {
        return Err(Error::Core(format!(
            "the hard state in {} was rebuilt but this node's id is unknown; \
             start it with its id",
            raft_dir.display()
        )));
    }
    *lock(&inner.preparer) = state.preparer();
    let mut core = Core::new(config.core_config(id), state, opened.snapshots, opened.boot)
        .map_err(|e| Error::Core(e.to_string()))?;
    core.set_prepared_slot(inner.prepared.clone());
    let persister = Persister::new(id, opened.log, opened.meta);
    let (feedback_tx, feedback_rx) = crossbeam_channel::unbounded::<Feedback>();
    let transport = HttpTransport::new(
        id,
        config.address.clone(),
        config.tls.as_ref(),
        config.dial.clone(),
        feedback_tx,
        inner.snapshots.clone(),
        inner.runtime.clone(),
    )?;
    if !seed_peers.is_empty() {
        transport.set_peers(seed_peers);
    }
    info!(id, address = %config.address, "raft node starting");
    let handle = driver::spawn(
        core,
        persister,
        Arc::new(transport),
        feedback_rx,
        config.network_latency,
        inner.status.clone(),
        Arc::clone(&inner.stats),
    )?;
    Ok(handle)
}
