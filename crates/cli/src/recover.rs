//! `dqlite-rs recover`: the offline recovery procedure for a cluster that
//! lost its quorum. Stop every node, run `last-entry` on each directory,
//! run `reconfigure` once on the most recent one, copy that directory to
//! the other surviving members and run `adopt` on each copy, restart them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use dqlite_node::{NodeInfo, Role};

/// Recovery arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// Recovery steps.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print `term index` of the last log entry of a stopped node (reads
    /// only). The largest term, then index, is the most recent.
    LastEntry {
        /// The node's data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON: {"term":T,"index":I}.
        #[arg(long)]
        json: bool,
    },
    /// Force the membership of a stopped node to exactly the given nodes.
    Reconfigure {
        /// The node's data directory.
        #[arg(long)]
        dir: PathBuf,
        /// A member as ID=ADDRESS=ROLE (role: voter, standby, spare); repeat.
        #[arg(long = "node", required = true, value_name = "ID=ADDR=ROLE")]
        nodes: Vec<String>,
    },
    /// Make a copy of the reconfigured directory this node's own (its id
    /// and address); run it on each other surviving member's copy.
    Adopt {
        /// The copied data directory.
        #[arg(long)]
        dir: PathBuf,
        /// This node's id (as in the `--node` list given to reconfigure).
        #[arg(long)]
        id: u64,
        /// This node's address.
        #[arg(long)]
        address: String,
    },
}

fn parse_node(spec: &str) -> anyhow::Result<NodeInfo> {
    let mut parts = spec.splitn(3, '=');
    let (Some(id), Some(address), Some(role)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("bad --node {spec:?}: expected ID=ADDRESS=ROLE");
    };
    let id = id
        .parse::<u64>()
        .with_context(|| format!("bad node id in {spec:?}"))?;
    let role = match role.to_ascii_lowercase().as_str() {
        "voter" => Role::Voter,
        "standby" | "stand-by" => Role::StandBy,
        "spare" => Role::Spare,
        other => bail!("unknown role {other:?} in {spec:?}: use voter, standby or spare"),
    };
    Ok(NodeInfo {
        id,
        address: address.to_string(),
        role,
        ..Default::default()
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::LastEntry { dir, json } => {
            let info = dqlite_node::read_last_entry_info(&dir)
                .with_context(|| format!("cannot read the log in {}", dir.display()))?;
            if json {
                println!("{{\"term\":{},\"index\":{}}}", info.term, info.index);
            } else {
                println!("{} {}", info.term, info.index);
            }
        }
        Command::Reconfigure { dir, nodes } => {
            let nodes = nodes
                .iter()
                .map(|s| parse_node(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let info = dqlite_node::reconfigure_membership_ext(&dir, &nodes)
                .with_context(|| format!("cannot reconfigure {}", dir.display()))?;
            println!(
                "membership of {} set to {} node(s) at term {} index {}",
                dir.display(),
                nodes.len(),
                info.term,
                info.index
            );
        }
        Command::Adopt { dir, id, address } => {
            dqlite_node::adopt_copied_directory(&dir, id, &address)
                .with_context(|| format!("cannot adopt {}", dir.display()))?;
            println!("{} now belongs to node {id} at {address}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_specs() {
        let n = parse_node("3=127.0.0.1:9003=standby").unwrap();
        assert_eq!(
            (n.id, n.address.as_str(), n.role),
            (3, "127.0.0.1:9003", Role::StandBy)
        );
        assert!(parse_node("3=127.0.0.1:9003").is_err());
        assert!(parse_node("x=a=voter").is_err());
        assert!(parse_node("1=a=boss").is_err());
    }
}
