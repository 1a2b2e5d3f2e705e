//! The node: a dqlite server and a consensus service on one port and one
//! data directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dqlite_client::Dial;
use dqlite_consensus::transport::TlsConfig;
use dqlite_consensus::Service;
use dqlite_server::dir::{DataDir, NodeRecord};
use dqlite_server::{Databases, Server, ServerConfig};
use dqlite_store::{Store, StoreError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cluster::RaftCluster;
use crate::manager;
use crate::metrics::NodeMetrics;
use crate::peers::RaftPeers;
use crate::roles::Targets;
use crate::store::{ServiceProposer, StoreDatabases};
use crate::{is_bootstrap_id, NodeError};

/// A file a node writes into its directory before it first tries to join
/// a cluster and never removes: such a directory must not bootstrap a new
/// cluster by itself, or a rerun without `--join` after a failed join
/// would split the user's cluster in two.
pub const JOIN_MARKER: &str = "join-attempted";

/// Node options; every one has a default.
///
/// ```
/// use std::time::Duration;
/// let options = dqlite_node::Options::default()
///     .with_bind_address("0.0.0.0:9001")
///     .with_network_latency(Duration::from_millis(5))
///     .with_failure_domain(2)
///     .with_snapshot_params(1024, 8192)
///     .with_join(["10.0.0.1:9001", "10.0.0.2:9001"]);
/// assert_eq!(options.join.len(), 2);
/// ```
#[derive(Clone)]
pub struct Options {
    /// Listen here instead of the node's address (e.g. `0.0.0.0:9001`).
    pub bind_address: Option<String>,
    /// Members to join through when the directory is empty.
    pub join: Vec<String>,
    /// Bootstrap a new cluster even when the id is not a bootstrap id or
    /// the directory once tried to join a cluster (without `join` only).
    pub bootstrap: bool,
    /// Keep databases on disk rather than in memory.
    pub disk_mode: bool,
    /// Reported by DESCRIBE; used to spread roles over failure domains.
    pub failure_domain: u64,
    /// One-way network latency between nodes: the raft tick (heartbeat
    /// every 2 ticks, election timeout 10 to 20 ticks).
    pub network_latency: Duration,
    /// Take a snapshot after this many entries.
    pub snapshot_threshold: u64,
    /// Keep this many entries behind a snapshot.
    pub snapshot_trailing: u64,
    /// Set damaged log or snapshot files aside at start instead of failing.
    pub auto_recovery: bool,
    /// Mutual TLS between nodes and for dqlite clients: with it the node
    /// serves TLS only, and asks every client for a certificate the CA
    /// vouches for.
    pub tls: Option<TlsConfig>,
    /// Opens every connection this node makes to another node: raft
    /// traffic, snapshots, joins, and the role manager's probes and
    /// handover (TLS runs over it). Default: TCP. A proxy, a tunnel or a
    /// Unix socket goes here; the addresses are still the ones nodes
    /// advertise.
    pub dial: Dial,
    /// Server settings (message size limit, connection limit, busy
    /// timeout, heartbeat reported in WELCOME).
    pub max_message_size: u64,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Voters the role manager keeps (go-dqlite's default: 3).
    pub voters: usize,
    /// Standbys the role manager keeps (go-dqlite's default: 3).
    pub standbys: usize,
    /// Run the role manager (it acts while this node leads) and hand the
    /// role over on close. Off, roles change only when a client asks
    /// (ASSIGN), as with C dqlite 1.11 under go-dqlite's app, which
    /// manages roles itself.
    pub role_management: bool,
    /// Read leases: for a while after a quorum confirmed its leadership,
    /// the leader answers linearizable reads without asking the quorum
    /// again (see `dqlite_consensus::lease`). Off by default: it assumes
    /// the nodes' clocks run at about the same rate and never stop while
    /// a machine is suspended. Turn it on for every node of a cluster.
    pub read_lease: bool,
}

impl Default for Options {
    fn default() -> Self {
        let defaults = ServerConfig::new(0, "", "");
        Options {
            bind_address: None,
            join: Vec::new(),
            bootstrap: false,
            disk_mode: false,
            failure_domain: 0,
            network_latency: Duration::from_millis(20),
            snapshot_threshold: 1024,
            snapshot_trailing: 8192,
            auto_recovery: true,
            tls: None,
            dial: Dial::tcp(),
            max_message_size: defaults.max_message_size,
            max_connections: defaults.max_connections,
            voters: Targets::default().voters,
            standbys: Targets::default().standbys,
            role_management: true,
            read_lease: false,
        }
    }
}

impl Options {
    /// Listen on `address` instead of the node's address.
    pub fn with_bind_address(mut self, address: impl Into<String>) -> Self {
        self.bind_address = Some(address.into());
        self
    }
    /// Join through any of these members when the directory is empty.
    pub fn with_join<S: Into<String>>(mut self, members: impl IntoIterator<Item = S>) -> Self {
        self.join = members.into_iter().map(Into::into).collect();
        self
    }
    /// Bootstrap a new cluster whatever the id or the directory's past.
    pub fn with_bootstrap(mut self, on: bool) -> Self {
        self.bootstrap = on;
        self
    }
    /// Keep databases on disk.
    pub fn with_disk_mode(mut self, on: bool) -> Self {
        self.disk_mode = on;
        self
    }
    /// Set the failure domain.
    pub fn with_failure_domain(mut self, domain: u64) -> Self {
        self.failure_domain = domain;
        self
    }
    /// Set the expected one-way network latency (raft timing scales with it).
    pub fn with_network_latency(mut self, latency: Duration) -> Self {
        self.network_latency = latency;
        self
    }
    /// Set the snapshot threshold and trailing entries.
    pub fn with_snapshot_params(mut self, threshold: u64, trailing: u64) -> Self {
        self.snapshot_threshold = threshold;
        self.snapshot_trailing = trailing;
        self
    }
    /// Turn auto-recovery on or off.
    pub fn with_auto_recovery(mut self, on: bool) -> Self {
        self.auto_recovery = on;
        self
    }
    /// Set how many voters the role manager keeps (at least 1).
    pub fn with_voters(mut self, n: usize) -> Self {
        self.voters = n;
        self
    }
    /// Set how many standbys the role manager keeps.
    pub fn with_standbys(mut self, n: usize) -> Self {
        self.standbys = n;
        self
    }
    /// Turn read leases on or off.
    pub fn with_read_lease(mut self, on: bool) -> Self {
        self.read_lease = on;
        self
    }
    /// Turn the role manager and the role handover on close on or off.
    pub fn with_role_management(mut self, on: bool) -> Self {
        self.role_management = on;
        self
    }
    /// Open connections to other nodes with `dial`.
    pub fn with_dial(mut self, dial: Dial) -> Self {
        self.dial = dial;
        self
    }
    /// Use mutual TLS between nodes and with clients.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

struct Running {
    service: Service,
    roles_stop: watch::Sender<bool>,
    /// The role manager, when it runs.
    roles: Option<JoinHandle<()>>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), dqlite_server::ServerError>>,
    store: Arc<Store>,
    bound: String,
    /// How to reach other nodes as a dqlite client.
    client: dqlite_client::Config,
    _dir: DataDir,
}

/// A dqlite-rs node. Build it with [`Node::new`], then [`Node::start`];
/// [`Node::close`] hands leadership over and stops it.
///
/// ```no_run
/// # async fn demo() -> Result<(), dqlite_node::NodeError> {
/// let mut node = dqlite_node::Node::new(1, "127.0.0.1:9001", "/tmp/n1", Default::default());
/// node.start().await?;
/// println!("serving on {:?}", node.bind_address());
/// node.close().await
/// # }
/// ```
pub struct Node {
    id: u64,
    address: String,
    dir: PathBuf,
    options: Options,
    running: Option<Running>,
}

impl Node {
    /// A node with id `id` (0: let the cluster allocate one on join), at
    /// `address` (what clients and peers dial; port 0 picks one), with
    /// its data in `dir`.
    pub fn new(
        id: u64,
        address: impl Into<String>,
        dir: impl Into<PathBuf>,
        options: Options,
    ) -> Node {
        Node {
            id,
            address: address.into(),
            dir: dir.into(),
            options,
            running: None,
        }
    }

    /// This node's id (the allocated one once joined).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address clients and peers dial (with the bound port once started).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The address actually bound, once started.
    pub fn bind_address(&self) -> Option<&str> {
        self.running.as_ref().map(|r| r.bound.as_str())
    }

    /// The consensus service, once started.
    pub fn service(&self) -> Option<&Service> {
        self.running.as_ref().map(|r| &r.service)
    }

    /// The replicated store, once started (database images for checks).
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.running.as_ref().map(|r| &r.store)
    }

    /// Starts serving. With data in the directory the node rejoins its
    /// cluster; otherwise it joins through [`Options::join`], or
    /// bootstraps a new cluster when its id is 1 or [`crate::BOOTSTRAP_ID`];
    /// any other node waits until it is added. A directory that once
    /// tried to join ([`JOIN_MARKER`]) bootstraps only with
    /// [`Options::bootstrap`].
    ///
    /// A start that fails before any join attempt removes the directory
    /// if it created it, so nothing half-made is left behind.
    pub async fn start(&mut self) -> Result<(), NodeError> {
        if self.running.is_some() {
            return Err(NodeError::Misuse("the node is already started".into()));
        }
        if self.options.voters == 0 {
            return Err(NodeError::Misuse(
                "the voters target must be at least 1".into(),
            ));
        }
        if self.options.network_latency.is_zero() {
            return Err(NodeError::Misuse("network latency must be positive".into()));
        }
        if self.options.bootstrap && !self.options.join.is_empty() {
            return Err(NodeError::Misuse(
                "bootstrap a new cluster or join one, not both".into(),
            ));
        }
        let created = !self.dir.exists();
        let result = self.start_in_dir().await;
        // After a join attempt the directory stays: it records the attempt.
        if result.is_err() && created && !self.dir.join(JOIN_MARKER).exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                warn!(dir = %self.dir.display(), error = %e, "cannot remove the data directory of a failed start");
            }
        }
        result
    }

    async fn start_in_dir(&mut self) -> Result<(), NodeError> {
        let dir = DataDir::open(&self.dir)?;
        let existing = dir.read_node()?;
        if let Some(record) = &existing {
            if self.id != 0 && record.id != self.id {
                return Err(NodeError::Misuse(format!(
                    "data directory {} belongs to node {}, not node {}",
                    self.dir.display(),
                    record.id,
                    self.id
                )));
            }
            self.id = record.id;
        }
        let mut server_config = ServerConfig::new(self.id, self.address.clone(), &self.dir);
        server_config.bind = self.options.bind_address.clone();
        server_config.failure_domain = self.options.failure_domain;
        server_config.max_message_size = self.options.max_message_size;
        server_config.max_connections = self.options.max_connections;
        let (listener, address) = dqlite_server::listen(&server_config).await?;
        let bound = listener
            .local_address()
            .map_err(|e| NodeError::Misuse(format!("cannot read the bound address: {e}")))?;
        self.address = address.clone();

        let mut config = dqlite_consensus::Config::new(address.clone(), &self.dir);
        config.id = self.id;
        config.network_latency = self.options.network_latency;
        config.snapshot_threshold = self.options.snapshot_threshold;
        config.snapshot_trailing = self.options.snapshot_trailing;
        config.auto_recovery = self.options.auto_recovery;
        config.read_lease = self.options.read_lease;
        config.tls = self.options.tls.clone();
        config.dial = self.options.dial.clone();
        config.failure_domain = self.options.failure_domain;
        config.join_role = Some(manager::join_role(self.targets()));
        // Peer traffic shares the client port: the server hands it over.
        config.listen = false;
        let store = if self.options.disk_mode {
            Store::disk_with(&self.dir.join("db"), self.options.auto_recovery)
        } else {
            Store::memory()
        }
        .map_err(|e| match e {
            StoreError::Damaged { .. } => NodeError::Store(format!(
                "{e}; auto-recovery is off: start the node with auto-recovery (without \
                 --no-auto-recovery) to set the damaged files aside and rebuild them from \
                 the other nodes, or restore the data directory from a backup"
            )),
            e => NodeError::Store(e.to_string()),
        })?;
        let service = Service::start(config, store.state()).await?;
        store.set_proposer(Arc::new(ServiceProposer {
            service: service.clone(),
        }));
        let metrics = NodeMetrics::new(&service, &store, &server_config.metrics);
        let databases: Arc<dyn Databases> = Arc::new(StoreDatabases(Arc::clone(&store)));
        let cluster = Arc::new(RaftCluster::new(
            service.clone(),
            self.id,
            address.clone(),
            self.options.failure_domain,
            self.options.network_latency,
        ));
        let tls = match &self.options.tls {
            Some(t) => Some(
                t.server_config()
                    .map_err(|e| NodeError::Misuse(format!("TLS: {e}")))?,
            ),
            None => None,
        };
        let client = self.client_config()?;
        let peers = Arc::new(RaftPeers::new(service.http(), metrics));
        let mut server = Server::from_listener(
            listener,
            address.clone(),
            server_config,
            databases,
            cluster,
            Some(peers),
        );
        if let Some(tls) = tls {
            server = server.with_tls(tls);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let (roles_stop, roles_stopped) = watch::channel(false);
        let settings = manager::Settings {
            client: client.clone(),
            targets: self.targets(),
            online_window: self.online_window(),
            // Ten rounds a second at the default latency.
            round: self.options.network_latency * 5,
        };
        let roles = self
            .options
            .role_management
            .then(|| tokio::spawn(manager::run(service.clone(), settings, roles_stopped)));
        let running = Running {
            service: service.clone(),
            roles_stop,
            roles,
            stop,
            server,
            store,
            bound,
            client,
            _dir: dir,
        };
        // From here on `close` can clean up whatever happens next.
        self.running = Some(running);
        if let Err(e) = self.form_cluster(&service, existing.is_some()).await {
            let _ = self.close().await;
            return Err(e);
        }
        if let Some(r) = &self.running {
            r._dir.write_node(&NodeRecord {
                id: self.id,
                address: self.address.clone(),
            })?;
        }
        if existing.is_some() {
            // The failure domain may have changed since the last run; the
            // weight lives in the registry and is kept.
            tokio::spawn(publish_failure_domain(service, self.options.failure_domain));
        }
        info!(id = self.id, address = %self.address, "node started");
        Ok(())
    }

    /// How this node talks to others as a dqlite client (the role
    /// manager's probes and handover).
    fn client_config(&self) -> Result<dqlite_client::Config, NodeError> {
        let mut config = dqlite_client::Config::default();
        config.dial = self.options.dial.clone();
        if let Some(t) = &self.options.tls {
            config.tls = Some(
                t.client()
                    .map_err(|e| NodeError::Misuse(format!("TLS: {e}")))?,
            );
        }
        Ok(config)
    }

    fn targets(&self) -> Targets {
        Targets {
            voters: self.options.voters,
            standbys: self.options.standbys,
        }
    }

    /// The consensus core's online window (`CoreConfig::online_ticks`
    /// ticks of one network latency each).
    fn online_window(&self) -> Duration {
        self.options.network_latency * 150
    }

    /// Restarts, joins or bootstraps, then learns the final id.
    async fn form_cluster(&mut self, service: &Service, restarted: bool) -> Result<(), NodeError> {
        let wait_id = |service: &Service| {
            let mut rx = service.watch();
            async move {
                tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.id != 0))
                    .await
                    .ok()
                    .and_then(|r| r.ok().map(|s| s.id))
            }
        };
        let marker = self.dir.join(JOIN_MARKER);
        let join_attempted = marker.exists();
        if !self.options.join.is_empty() {
            if !join_attempted {
                std::fs::write(&marker, self.options.join.join(",")).map_err(|source| {
                    NodeError::Io {
                        context: format!("cannot write {}", marker.display()),
                        source,
                    }
                })?;
            }
            let mut errors = Vec::new();
            for member in &self.options.join {
                match service.join(member).await {
                    Ok(()) | Err(dqlite_consensus::Error::ExistingCluster) => {
                        errors.clear();
                        break;
                    }
                    Err(e) => errors.push(format!("{member}: {e}")),
                }
            }
            if !errors.is_empty() {
                return Err(NodeError::Join(errors.join("; ")));
            }
        } else if self.options.bootstrap || (is_bootstrap_id(self.id) && !join_attempted) {
            match service.init().await {
                Ok(()) | Err(dqlite_consensus::Error::ExistingCluster) => {}
                Err(e) => return Err(e.into()),
            }
        } else if join_attempted && !restarted {
            return Err(NodeError::Misuse(format!(
                "data directory {} once tried to join a cluster, so it does not start a new \
                 one by itself: rerun with --join ADDRESS of a member, or with --bootstrap to \
                 start a new cluster anyway, or use an empty directory",
                self.dir.display()
            )));
        } else if !restarted {
            info!(
                id = self.id,
                "no cluster to join and not a bootstrap id: waiting to be added"
            );
            return Ok(());
        }
        if let Some(id) = wait_id(service).await {
            self.id = id;
        }
        Ok(())
    }

    /// Resolves once this node has been removed from the cluster (by a
    /// REMOVE on the leader). It then refuses every client request with a
    /// message naming the remaining members; the owner decides whether to
    /// [`Node::close`] it. Never resolves for a node that is not running.
    pub async fn removed(&self) {
        if let Some(running) = &self.running {
            let mut status = running.service.watch();
            if status.wait_for(|s| s.removed).await.is_ok() {
                return;
            }
        }
        // Not running, or the service stopped: removal cannot come.
        std::future::pending::<()>().await
    }

    /// Stops the node. A leader first hands leadership to the most
    /// up-to-date online voter, so the cluster does not wait for an
    /// election timeout; then a voter or standby asks the leader to give
    /// its role to the best online standby or spare and becomes a spare,
    /// so the cluster keeps its voters while this node is away (with
    /// [`Options::role_management`] only).
    pub async fn close(&mut self) -> Result<(), NodeError> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let service = &running.service;
        let _ = running.roles_stop.send(true);
        if let Some(roles) = running.roles {
            let _ = roles.await;
        }
        let status = service.status();
        if status.is_leader {
            if let Some(target) = crate::cluster::best_voter(&status) {
                let timeout = (self.options.network_latency * 60).max(Duration::from_secs(2));
                match service.transfer_leadership(target, timeout).await {
                    Ok(()) => info!(to = target, "leadership handed over"),
                    Err(e) => warn!(to = target, error = %e, "leadership handover failed"),
                }
            }
        }
        // Then the role, so the cluster keeps its voters while this node is
        // away (a rolling restart never loses quorum).
        if self.options.role_management {
            manager::hand_over_role(service, Duration::from_secs(20), &running.client).await;
        }
        let _ = running.stop.send(());
        let result = match tokio::time::timeout(Duration::from_secs(10), running.server).await {
            Ok(Ok(r)) => r.map_err(NodeError::from),
            Ok(Err(e)) => Err(NodeError::Misuse(format!("server task failed: {e}"))),
            Err(_) => Err(NodeError::Misuse("server did not stop in 10 s".into())),
        };
        service.stop().await;
        result
    }
}

/// Records the failure domain this node was started with in the registry
/// once it is a member and a leader is known (a few attempts, bounded).
async fn publish_failure_domain(service: Service, failure_domain: u64) {
    let mut status = service.watch();
    for _ in 0..10 {
        let wait = status
            .wait_for(|s| s.leader != 0 && s.cluster.nodes.contains_key(&s.id) && s.applied > 0);
        let weight = match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(s)) => match s.cluster.nodes.get(&s.id) {
                Some(me) if me.failure_domain == failure_domain => return,
                Some(me) => me.weight,
                None => return,
            },
            _ => return,
        };
        match service.publish_metadata(failure_domain, weight).await {
            Ok(()) => return,
            Err(e) => debug!(error = %e, "cannot publish the failure domain yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
