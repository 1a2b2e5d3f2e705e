//! `dqlite-rs`: one binary with a subcommand per job. Each subcommand lives
//! in its own module; this file only parses arguments and dispatches.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cluster;
mod logging;
mod node;
mod recover;
mod shell;

/// A distributed SQLite engine, wire-compatible with dqlite.
#[derive(Debug, Parser)]
#[command(name = "dqlite-rs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (no flags needed: 127.0.0.1:9001, data in ./dqlite-data).
    Node(node::Args),
    /// Interactive SQL shell for any dqlite-protocol cluster.
    Shell(shell::Args),
    /// Cluster membership: list, leader, add, assign, remove, transfer, describe, weight.
    Cluster(cluster::Args),
    /// Offline recovery of a cluster that lost its quorum.
    Recover(recover::Args),
    /// Run go-dqlite's dqlite-benchmark workloads against a cluster.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only `node` has logging flags; the other subcommands follow RUST_LOG.
    let logging = match &cli.command {
        Command::Node(args) => logging::init(args.log_level.as_deref(), args.log_format),
        _ => logging::init(None, logging::LogFormat::Text),
    };
    if let Err(err) = logging {
        eprintln!("Error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Node(args) => node::run(args),
        Command::Shell(args) => shell::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Recover(args) => recover::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
