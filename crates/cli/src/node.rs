//! `dqlite-rs node`: run a node until SIGINT or SIGTERM.
//!
//! A node with an empty directory joins through `--join`, or bootstraps a
//! new cluster when its id is 1 or BOOTSTRAP_ID; with any other id it
//! waits until a leader ADDs and ASSIGNs it. A node with data restarts
//! into its cluster. A directory that once tried to join never bootstraps
//! by itself: it needs `--join` again, or `--bootstrap`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dqlite_node::{Node, Options, TlsConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::logging::LogFormat;

/// Node arguments. With none, a node bootstraps a one-node cluster on
/// 127.0.0.1:9001 with its data in ./dqlite-data.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Node id. Default: 1 (bootstraps) without --join; with --join or an
    /// existing directory, the cluster's (allocated on join, read back on
    /// restart). Another id with an empty directory and no --join waits
    /// until a leader adds it (ADD, then ASSIGN).
    #[arg(long)]
    pub id: Option<u64>,
    /// Address clients and other nodes dial (host:port). Port 0 picks a free
    /// port and advertises it.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub address: String,
    /// Data directory; created if missing.
    #[arg(long, default_value = "./dqlite-data")]
    pub dir: PathBuf,
    /// Listen on this address instead of --address (e.g. 0.0.0.0:9001).
    #[arg(long)]
    pub bind: Option<String>,
    /// Join the cluster through any of these members (comma-separated)
    /// when the directory is empty.
    #[arg(long, value_delimiter = ',', value_name = "ADDR[,ADDR...]")]
    pub join: Vec<String>,
    /// Start a new cluster even if the directory once tried to join one
    /// (or with an id that would otherwise wait to be added).
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// Keep databases on disk instead of in memory.
    #[arg(long)]
    pub disk_mode: bool,
    /// Failure domain: recorded in the replicated registry, reported by
    /// DESCRIBE; the role manager spreads voters and standbys over domains.
    #[arg(long, default_value_t = 0)]
    pub failure_domain: u64,
    /// Voters the role manager keeps (while it leads).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub voters: u64,
    /// Standbys the role manager keeps (while it leads).
    #[arg(long, default_value_t = 3)]
    pub standbys: u64,
    /// Expected one-way network latency between nodes; raft's heartbeat
    /// (2x) and election timeout (10-20x) scale with it.
    #[arg(long, default_value_t = 20)]
    pub network_latency_ms: u64,
    /// Read leases: for a while after a quorum confirmed its leadership
    /// (145 ms at the default latency), the leader answers reads without
    /// asking it again. Reads stay linearizable as long as the nodes'
    /// clocks run at about the same rate and no machine is suspended while
    /// it leads. Give it to every node of the cluster.
    #[arg(long)]
    pub read_lease: bool,
    /// Threads that serve the network (clients and other nodes). SQL, the
    /// raft log and its disk run on threads of their own, so by default
    /// half the CPUs (at least one) are enough: more only add wake-ups.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub io_threads: Option<u64>,
    /// Take a snapshot after this many log entries.
    #[arg(long, default_value_t = 1024)]
    pub snapshot_threshold: u64,
    /// Keep this many log entries behind a snapshot.
    #[arg(long, default_value_t = 8192)]
    pub snapshot_trailing: u64,
    /// Fail at start on a damaged log or snapshot instead of setting the
    /// damaged files aside.
    #[arg(long)]
    pub no_auto_recovery: bool,
    /// Mutual TLS between nodes: the cluster CA certificate (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM).
    #[arg(long, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or tracing
    /// directives such as `info,dqlite_consensus=debug`). Takes precedence
    /// over RUST_LOG; without either, `info`.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do once this node is removed from the cluster: exit, or
    /// wait (keep running, refusing clients with a message that names the
    /// remaining members) until stopped.
    #[arg(long, value_enum, default_value_t = OnRemoval::Exit)]
    pub on_removal: OnRemoval,
}

/// What a node does once it was removed from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRemoval {
    /// Stop and exit with status 0.
    Exit,
    /// Keep running and refuse clients until SIGINT or SIGTERM.
    Wait,
}

fn tls(args: &Args) -> anyhow::Result<Option<TlsConfig>> {
    let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    Ok(Some(TlsConfig {
        ca_pem: read(ca)?,
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    }))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.network_latency_ms == 0 {
        anyhow::bail!("--network-latency-ms must be at least 1");
    }
    if args.id == Some(0) {
        anyhow::bail!(
            "--id 0 is not a node id: pass a positive id, or leave --id out \
             (1 for a new cluster; with --join the cluster allocates one)"
        );
    }
    let mut options = Options::default()
        .with_join(args.join.clone())
        .with_bootstrap(args.bootstrap)
        .with_disk_mode(args.disk_mode)
        .with_failure_domain(args.failure_domain)
        .with_voters(usize::try_from(args.voters).unwrap_or(usize::MAX))
        .with_standbys(usize::try_from(args.standbys).unwrap_or(usize::MAX))
        .with_network_latency(Duration::from_millis(args.network_latency_ms))
        .with_snapshot_params(args.snapshot_threshold, args.snapshot_trailing)
        .with_auto_recovery(!args.no_auto_recovery)
        .with_read_lease(args.read_lease);
    options.bind_address = args.bind.clone();
    options.tls = tls(&args)?;
    // 0 lets the node take its id from the directory or from the cluster.
    let has_data = args.dir.join("node.json").exists();
    let id = args.id.unwrap_or(if args.join.is_empty() && !has_data {
        1
    } else {
        0
    });
    let io_threads = args
        .io_threads
        .map_or_else(default_io_threads, |n| n as usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Before the node starts serving: a SIGTERM that arrives while it
        // starts is then a graceful stop, not the default instant death.
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let mut node = Node::new(id, args.address, args.dir.clone(), options);
        if let Err(err) = node.start().await {
            let err = anyhow::Error::new(err);
            let in_use = err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
            });
            let hint = if in_use {
                " (another process holds the port: stop it, or choose another --address)"
            } else {
                ""
            };
            return Err(err.context(format!(
                "cannot start node with data directory {}{hint}",
                args.dir.display()
            )));
        }
        info!(
            "dqlite-rs node {} listening on {} (clients dial {}), data in {}",
            node.id(),
            node.bind_address().unwrap_or("?"),
            node.address(),
            args.dir.display()
        );
        let on_removal = args.on_removal;
        {
            let removed = async {
                node.removed().await;
                let id = node.id();
                match on_removal {
                    OnRemoval::Exit => warn!(
                        id,
                        "this node was removed from the cluster: exiting \
                     (its data directory can be deleted; --on-removal wait keeps it running)"
                    ),
                    OnRemoval::Wait => {
                        warn!(
                        id,
                        "this node was removed from the cluster: refusing clients until stopped"
                    );
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
                () = removed => {}
            }
        }
        node.close().await?;
        info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Half the CPUs this process may use, at least one.
fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2))
}
