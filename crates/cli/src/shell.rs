//! `dqlite-rs shell`: placeholder until the client crate lands.

use std::process::ExitCode;

/// Shell arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated server addresses.
    #[arg(short = 's', long = "servers", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Database name.
    pub database: String,
}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the shell is not built yet")
}
