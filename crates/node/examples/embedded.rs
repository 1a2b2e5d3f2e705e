//! Embeds a dqlite-rs node in a program: start it (bootstrap, or join with
//! `--join`), use it through the Rust client, and close it on Ctrl-C.
//!
//! ```text
//! cargo run -p dqlite-node --example embedded -- 127.0.0.1:9001 /tmp/n1
//! cargo run -p dqlite-node --example embedded -- 127.0.0.1:9002 /tmp/n2 127.0.0.1:9001
//! ```

use std::time::Duration;

use dqlite_node::{Node, Options, BOOTSTRAP_ID};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let dir = args.next().unwrap_or_else(|| "./embedded-data".into());
    let join: Vec<String> = args.collect();

    // The first node bootstraps; the others join through it and get an id
    // from the cluster.
    let id = if join.is_empty() { BOOTSTRAP_ID } else { 0 };
    let options = Options::default()
        .with_join(join)
        .with_network_latency(Duration::from_millis(10));
    let mut node = Node::new(id, address, dir, options);
    node.start().await?;
    println!(
        "node {} serving {} (bound {:?})",
        node.id(),
        node.address(),
        node.bind_address()
    );

    // Any dqlite client works; here the Rust one, through this node.
    let client_config = dqlite_client::Config::default();
    let mut client = dqlite_client::Client::find_leader(&[node.address()], &client_config).await?;
    for member in client.cluster().await? {
        println!(
            "member {} at {} ({:?})",
            member.id, member.address, member.role
        );
    }

    tokio::signal::ctrl_c().await?;
    node.close().await?;
    Ok(())
}
