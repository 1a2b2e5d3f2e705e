//! `dqlite-rs node`: run a node until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dqlite_server::{Server, ServerConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// Node arguments. With none, a node serves on 127.0.0.1:9001 with its data
/// in ./dqlite-data.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Node id; 1 bootstraps a new cluster.
    #[arg(long, default_value_t = 1)]
    pub id: u64,
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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut config = ServerConfig::new(args.id, args.address, args.dir.clone());
        config.bind = args.bind;
        let server = Server::bind(config).await.with_context(|| {
            format!(
                "cannot start node with data directory {}",
                args.dir.display()
            )
        })?;
        let local = server
            .local_addr()
            .context("cannot read the bound address")?;
        info!(
            "dqlite-rs node {} listening on {} (clients dial {}), data in {}",
            args.id,
            local,
            server.address(),
            args.dir.display()
        );
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        server
            .run(async move {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = int.recv() => info!("SIGINT received"),
                }
            })
            .await?;
        info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
