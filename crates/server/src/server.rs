//! The listener: binds, accepts with a bound on open connections, reads the
//! first 8 bytes to tell a dqlite client from anything else, and hands
//! clients to their own task. Shutdown stops accepting, ends every
//! connection and waits for them with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, SingleNode};
use crate::conn::{self, parse_handshake};
use crate::databases::{Databases, LocalDatabases};
use crate::dir::{DataDir, NodeRecord};
use crate::gateway::Shared;
use crate::listener::{Listener, Stream};
use crate::metrics::ServerMetrics;
use crate::peer::{sniff, PeerHandler, PeerStream, Prefixed, Sniffed};
use crate::ServerError;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Node id.
    pub id: u64,
    /// The address clients dial, reported by LEADER and CLUSTER. A port of
    /// 0 means "whatever port was bound".
    pub address: String,
    /// Where to listen, if not at `address`.
    pub bind: Option<String>,
    /// The data directory.
    pub dir: PathBuf,
    /// Largest request body accepted; a longer length word closes the
    /// connection.
    pub max_message_size: u64,
    /// Most client connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a writer waits for the database lock before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// Sent in WELCOME.
    pub heartbeat_timeout_ms: u64,
    /// Reported by DESCRIBE.
    pub failure_domain: u64,
    /// Where the server counts statements, connections and errors; an
    /// embedder that exports metrics passes the handles it registered.
    pub metrics: ServerMetrics,
}

impl ServerConfig {
    /// Defaults for node `id` at `address` with data in `dir`.
    pub fn new(id: u64, address: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            address: address.into(),
            bind: None,
            dir: dir.into(),
            max_message_size: 64 << 20,
            max_connections: 1024,
            busy_timeout: Duration::from_secs(1),
            heartbeat_timeout_ms: 15_000,
            failure_domain: 0,
            metrics: ServerMetrics::default(),
        }
    }
}

/// A bound server, ready to run.
///
/// ```no_run
/// # async fn demo() -> Result<(), dqlite_server::ServerError> {
/// use dqlite_server::{Server, ServerConfig};
/// let server = Server::bind(ServerConfig::new(1, "127.0.0.1:9001", "./dqlite-data")).await?;
/// server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub struct Server {
    listener: Listener,
    address: String,
    shared: Arc<Shared>,
    config: ServerConfig,
    peers: Option<Arc<dyn PeerHandler>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    _dir: Option<DataDir>,
}

impl Server {
    /// A single-node server: databases are files under `<dir>/db/` and
    /// this node is always the leader.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let dir = DataDir::open(&config.dir)?;
        let databases = LocalDatabases::new(dir.db_dir(), config.busy_timeout);
        let id = config.id;
        Self::bind_with(config, dir, Arc::new(databases), move |address| {
            Arc::new(SingleNode::new(id, address))
        })
        .await
    }

    /// A server over any store and cluster: `cluster` receives the
    /// advertised address once the listener is bound.
    pub async fn bind_with(
        config: ServerConfig,
        dir: DataDir,
        databases: Arc<dyn Databases>,
        cluster: impl FnOnce(String) -> Arc<dyn Cluster>,
    ) -> Result<Server, ServerError> {
        if let Some(record) = dir.read_node()? {
            if record.id != config.id {
                return Err(ServerError::Config(format!(
                    "data directory {} belongs to node {}, not node {}; pass --id {} or use another --dir",
                    config.dir.display(),
                    record.id,
                    config.id,
                    record.id
                )));
            }
        }
        let (listener, address) = listen(&config).await?;
        dir.write_node(&NodeRecord {
            id: config.id,
            address: address.clone(),
        })?;
        let cluster = cluster(address.clone());
        let mut server = Self::from_listener(listener, address, config, databases, cluster, None);
        server._dir = Some(dir);
        Ok(server)
    }

    /// A server on an already-bound listener (see [`listen`]), for an
    /// embedder that needs the address before it can build its cluster.
    /// `peers`, when given, serves the connections that are not dqlite
    /// clients (the `/raft/` HTTP traffic of a replicated node). The
    /// caller keeps the data directory (and its lock) itself.
    pub fn from_listener(
        listener: Listener,
        address: String,
        config: ServerConfig,
        databases: Arc<dyn Databases>,
        cluster: Arc<dyn Cluster>,
        peers: Option<Arc<dyn PeerHandler>>,
    ) -> Server {
        let shared = Arc::new(Shared {
            databases,
            cluster,
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            failure_domain: config.failure_domain,
            weight: AtomicU64::new(0),
            writers: Default::default(),
            metrics: config.metrics.clone(),
        });
        Server {
            listener,
            address,
            shared,
            config,
            peers,
            tls: None,
            _dir: None,
        }
    }

    /// Serves every connection over TLS with `config` (which should ask
    /// for client certificates): dqlite clients and peers alike, told
    /// apart inside the TLS stream. Plaintext connections are closed.
    pub fn with_tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Server {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// The server's metrics (live handles: register them once, read them
    /// at every scrape).
    pub fn metrics(&self) -> ServerMetrics {
        self.shared.metrics.clone()
    }

    /// The TCP address actually bound (an error for a Unix socket).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.tcp_addr()?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the server listens on a Unix socket",
            )
        })
    }

    /// The address clients are told to dial.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Serves until `shutdown` completes, then closes every connection,
    /// waiting up to five seconds for them to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        tokio::pin!(shutdown);
        let bound = self.listener.local_address().unwrap_or_default();
        info!(id = self.config.id, address = %self.address, %bound, "serving");
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather
                    // than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            let cancel = cancel.clone();
            let max = self.config.max_message_size;
            let peers = self.peers.clone();
            let tls = self.tls.clone();
            tracker.spawn(async move {
                match tls {
                    None => handle(stream, peer, shared, peers, max, cancel).await,
                    Some(tls) => handle_tls(stream, tls, peer, shared, peers, max, cancel).await,
                }
                drop(permit);
            });
        }
        info!("shutting down: closing client connections");
        cancel.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within 5 s");
        }
        Ok(())
    }
}

async fn handle(
    mut stream: Stream,
    peer: String,
    shared: Arc<Shared>,
    peers: Option<Arc<dyn PeerHandler>>,
    max: u64,
    cancel: CancellationToken,
) {
    let Some(first) = conn::read_handshake(&mut stream).await else {
        debug!(%peer, "no handshake");
        return;
    };
    if let Some(hs) = parse_handshake(first) {
        // Owned halves: no lock between the reader and the writer.
        match stream {
            Either::Left(tcp) => {
                let (rd, wr) = tcp.into_split();
                conn::serve(rd, wr, hs, shared, max, cancel).await;
            }
            Either::Right(unix) => {
                let (rd, wr) = unix.into_split();
                conn::serve(rd, wr, hs, shared, max, cancel).await;
            }
        }
        return;
    }
    serve_other(Box::new(stream), first, &peer, peers, cancel).await;
}

/// A connection to a TLS server: the TLS handshake first, then the same
/// sniffing inside. Anything else, a plaintext dqlite handshake included,
/// is closed: TLS is the only way in.
async fn handle_tls(
    mut stream: Stream,
    acceptor: tokio_rustls::TlsAcceptor,
    peer: String,
    shared: Arc<Shared>,
    peers: Option<Arc<dyn PeerHandler>>,
    max: u64,
    cancel: CancellationToken,
) {
    let Some(first) = conn::read_handshake(&mut stream).await else {
        debug!(%peer, "no handshake");
        return;
    };
    if sniff(&first) != Sniffed::Tls {
        debug!(%peer, "plaintext connection to a TLS server; closing");
        return;
    }
    let accept = acceptor.accept(Prefixed::new(first.to_vec(), stream));
    let mut stream = match tokio::time::timeout(conn::HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let Some(first) = conn::read_handshake(&mut stream).await else {
        debug!(%peer, "no handshake inside TLS");
        return;
    };
    if let Some(hs) = parse_handshake(first) {
        let (rd, wr) = tokio::io::split(stream);
        conn::serve(rd, wr, hs, shared, max, cancel).await;
        return;
    }
    serve_other(Box::new(stream), first, &peer, peers, cancel).await;
}

/// A connection that is not a dqlite client: HTTP goes to the peer
/// handler, anything else is closed.
async fn serve_other(
    stream: Box<dyn PeerStream>,
    first: [u8; 8],
    peer: &str,
    peers: Option<Arc<dyn PeerHandler>>,
    cancel: CancellationToken,
) {
    match (sniff(&first), peers) {
        (Sniffed::Http, Some(peers)) => {
            let serving = peers.serve(Prefixed::new(first.to_vec(), stream));
            tokio::select! {
                _ = serving => {}
                _ = cancel.cancelled() => {}
            }
        }
        // TLS to a server without it, or an unknown version: dqlite closes
        // without a word.
        (kind, _) => debug!(%peer, ?kind, "unknown protocol {:02x?}; closing", first),
    }
}

/// Binds the listener for `config` (its bind address, else its address;
/// `@name` is an abstract Unix socket) and returns it with the address to
/// advertise.
pub async fn listen(config: &ServerConfig) -> Result<(Listener, String), ServerError> {
    let bind = config
        .bind
        .clone()
        .unwrap_or_else(|| config.address.clone());
    let listener = Listener::bind(&bind).await.map_err(|e| ServerError::Io {
        context: format!("cannot listen on {bind}"),
        source: e,
    })?;
    let local = listener.tcp_addr().map_err(|e| ServerError::Io {
        context: "cannot read the bound address".into(),
        source: e,
    })?;
    let address = match local {
        Some(local) => advertised(&config.address, local),
        None => config.address.clone(),
    };
    Ok((listener, address))
}

/// The address to advertise: the configured one, with the bound port if
/// the configured port was 0.
fn advertised(configured: &str, bound: SocketAddr) -> String {
    match configured.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:{}", bound.port()),
        _ => configured.to_string(),
    }
}
