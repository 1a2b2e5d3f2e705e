//! `dqlite-kv`: a replicated key-value node over the coordination service,
//! for process-level tests and demos. Glue only: the logic is in the crate.
//!
//! - `dqlite-kv run --address A --api B --dir D [--init | --join ADDR]`
//!   prints `listening raft=<addr> api=<addr>` once ready. The API (plain
//!   HTTP, POST only): `/exec` (a JSON `KvCommand`), `/get` (a key, read
//!   after a linearizable barrier), `/status`.
//! - `dqlite-kv last-entry --dir D` prints `term index`.
//! - `dqlite-kv reconfigure --dir D --node ID=ADDR[=ROLE]...` forces a
//!   membership on a stopped node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use dqlite_consensus::kv::{KvCommand, KvState};
use dqlite_consensus::offline;
use dqlite_consensus::storage::RealDisk;
use dqlite_consensus::{Config, Error, NodeInfo, Role, Service};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "dqlite-kv",
    about = "Replicated key-value node (tests and demos)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Run {
        /// Raft address (host:port; port 0 picks one).
        #[arg(long)]
        address: String,
        /// Client API address.
        #[arg(long)]
        api: String,
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Node id to use (0: allocated on join, 1 on init).
        #[arg(long, default_value_t = 0)]
        id: u64,
        /// Bootstrap a new cluster.
        #[arg(long)]
        init: bool,
        /// Join through this member.
        #[arg(long)]
        join: Option<String>,
        /// Network latency in milliseconds (the raft tick).
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        /// Snapshot every N applied entries.
        #[arg(long, default_value_t = 1024)]
        snapshot_threshold: u64,
        /// Entries kept behind a snapshot.
        #[arg(long, default_value_t = 8192)]
        snapshot_trailing: u64,
    },
    /// Print the last entry's term and index of a stopped node.
    LastEntry {
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Force a membership on a stopped node (ID=ADDR[=voter|standby|spare]).
    Reconfigure {
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Members.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
    },
}

fn parse_node(s: &str) -> anyhow::Result<NodeInfo> {
    let mut parts = s.split('=');
    let id = parts
        .next()
        .context("missing id")?
        .parse()
        .context("bad id")?;
    let address = parts.next().context("missing address")?.to_string();
    let role = match parts.next().unwrap_or("voter") {
        "voter" => Role::Voter,
        "standby" => Role::StandBy,
        "spare" => Role::Spare,
        other => anyhow::bail!("unknown role {other}"),
    };
    Ok(NodeInfo {
        id,
        address,
        role,
        ..Default::default()
    })
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::LastEntry { dir } => {
            let info = offline::read_last_entry_info(Arc::new(RealDisk), &dir)?;
            println!("{} {}", info.term, info.index);
        }
        Cmd::Reconfigure { dir, nodes } => {
            let nodes = nodes
                .iter()
                .map(|s| parse_node(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let info = offline::reconfigure_membership(Arc::new(RealDisk), &dir, nodes)?;
            println!("{} {}", info.term, info.index);
        }
        Cmd::Run {
            address,
            api,
            dir,
            id,
            init,
            join,
            latency_ms,
            snapshot_threshold,
            snapshot_trailing,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let mut config = Config::new(address, dir);
                config.id = id;
                config.network_latency = Duration::from_millis(latency_ms);
                config.snapshot_threshold = snapshot_threshold;
                config.snapshot_trailing = snapshot_trailing;
                let kv = KvState::new();
                let service = Service::start(config, kv.clone()).await?;
                if init {
                    service.init().await?;
                } else if let Some(boot) = join {
                    service.join(&boot).await?;
                }
                let listener = TcpListener::bind(&api).await?;
                println!(
                    "listening raft={} api={}",
                    service.address(),
                    listener.local_addr()?
                );
                serve_api(listener, service, kv).await
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve_api(listener: TcpListener, service: Service, kv: KvState) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let (service, kv) = (service.clone(), kv.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (service, kv) = (service.clone(), kv.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(req, service, kv).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

fn error_reply(e: Error) -> Response<Full<Bytes>> {
    match e {
        Error::NotLeader { leader } => reply(
            StatusCode::MISDIRECTED_REQUEST,
            json!({ "error": "not leader", "leader": leader }),
        ),
        other => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": other.to_string() }),
        ),
    }
}

async fn handle(req: Request<Incoming>, service: Service, kv: KvState) -> Response<Full<Bytes>> {
    const T: Duration = Duration::from_secs(5);
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })),
    };
    match path.as_str() {
        "/exec" => {
            let Some(cmd) = KvCommand::decode(&body) else {
                return reply(StatusCode::BAD_REQUEST, json!({ "error": "bad command" }));
            };
            match service.exec(cmd.encode(), T).await {
                Ok(satisfied) => reply(StatusCode::OK, json!({ "satisfied": satisfied })),
                Err(e) => error_reply(e),
            }
        }
        "/get" => {
            let key = String::from_utf8_lossy(&body).into_owned();
            match service.wait_read(T).await {
                Ok(()) => reply(StatusCode::OK, json!({ "value": kv.get(&key) })),
                Err(e) => error_reply(e),
            }
        }
        "/status" => {
            let s = service.status();
            let nodes: Vec<_> = s
                .cluster
                .nodes
                .values()
                .map(|n| json!({ "id": n.id, "address": n.address, "role": format!("{:?}", n.role) }))
                .collect();
            reply(
                StatusCode::OK,
                json!({
                    "id": s.id, "leader": s.leader, "is_leader": s.is_leader, "term": s.term,
                    "applied": s.applied, "commit": s.commit, "snapshot_index": s.snapshot_index,
                    "snapshots_installed": s.snapshots_installed, "nodes": nodes, "error": s.error,
                }),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": "unknown path" })),
    }
}
