//! `dqlite-rs cluster`: membership administration of any dqlite-protocol
//! cluster (dqlite-rs or C dqlite), over the client crate.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use dqlite_client::{Client, Config, Role};

/// Cluster arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster members to contact (comma-separated); the leader is found
    /// through them. describe and weight talk to the first one.
    #[arg(short = 's', long = "servers", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Members: `ID ADDRESS ROLE FAILURE-DOMAIN WEIGHT` per line (the last
    /// two from each member's DESCRIBE; `-` when it does not answer).
    List,
    /// The leader: `ID ADDRESS`.
    Leader,
    /// Add a node (as a spare, then with --role).
    Add {
        /// Node id.
        id: u64,
        /// Its address.
        address: String,
        /// voter, standby or spare.
        #[arg(long, default_value = "voter")]
        role: String,
    },
    /// Change a node's role.
    Assign {
        /// Node id.
        id: u64,
        /// voter, standby or spare.
        role: String,
    },
    /// Remove a node.
    Remove {
        /// Node id.
        id: u64,
    },
    /// Hand leadership to a node (0: let the cluster choose).
    Transfer {
        /// Node id.
        #[arg(default_value_t = 0)]
        id: u64,
    },
    /// Failure domain and weight of the first server.
    Describe,
    /// Set the weight of the first server.
    Weight {
        /// The weight.
        weight: u64,
    },
}

fn parse_role(s: &str) -> anyhow::Result<Role> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "voter" | "0" => Role::Voter,
        "standby" | "stand-by" | "1" => Role::StandBy,
        "spare" | "2" => Role::Spare,
        other => bail!("unknown role {other:?}: use voter, standby or spare"),
    })
}

/// The role as the CLI prints it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Voter => "voter",
        Role::StandBy => "standby",
        Role::Spare => "spare",
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let timeout = Duration::from_secs(args.timeout);
    runtime.block_on(async move {
        tokio::time::timeout(timeout, execute(args))
            .await
            .unwrap_or_else(|_| bail!("timed out after {timeout:?}"))
    })
}

async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = Config::default();
    args.tls.apply(&mut config)?;
    // The client's errors name the addresses tried: no context to add.
    let leader = || async { Client::find_leader(&args.servers, &config).await };
    let first = || async { Client::connect(&args.servers[0], &config).await };
    match &args.command {
        Command::List => {
            // CLUSTER carries no metadata: ask each node (DESCRIBE answers
            // from the replicated registry); "-" when it does not answer.
            for n in leader().await?.cluster().await? {
                let meta = async {
                    let mut c = Client::connect(&n.address, &config).await?;
                    c.describe().await
                };
                let (domain, weight) =
                    match tokio::time::timeout(Duration::from_secs(2), meta).await {
                        Ok(Ok(m)) => (m.failure_domain.to_string(), m.weight.to_string()),
                        _ => ("-".to_string(), "-".to_string()),
                    };
                println!(
                    "{} {} {} {domain} {weight}",
                    n.id,
                    n.address,
                    role_name(n.role)
                );
            }
        }
        Command::Leader => match leader().await?.leader().await? {
            Some(l) => println!("{} {}", l.id, l.address),
            None => bail!("the cluster has no leader"),
        },
        Command::Add { id, address, role } => {
            let role = parse_role(role)?;
            leader().await?.add(*id, address, role).await?;
        }
        Command::Assign { id, role } => {
            let role = parse_role(role)?;
            leader().await?.assign(*id, role).await?;
        }
        Command::Remove { id } => leader().await?.remove(*id).await?,
        Command::Transfer { id } => leader().await?.transfer(*id).await?,
        Command::Describe => {
            let m = first().await?.describe().await?;
            println!("failure-domain: {}\nweight: {}", m.failure_domain, m.weight);
        }
        Command::Weight { weight } => first().await?.set_weight(*weight).await?,
    }
    Ok(ExitCode::SUCCESS)
}
