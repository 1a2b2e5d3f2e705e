//! `dqlite-rs`: one binary with a subcommand per job. Each subcommand lives
//! in its own module; this file only parses arguments and dispatches.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backup;
mod bench;
mod cluster;
mod logging;
mod node;
mod recover;
mod shell;
mod tls;

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
    /// Write a consistent plain SQLite file of a live database.
    Backup(backup::BackupArgs),
    /// Load a SQLite file into a new database through the cluster.
    Restore(backup::RestoreArgs),
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
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `: `-separated, leaving out a
/// cause whose text the line already holds (errors that print their
/// source and also return it would otherwise say it twice).
pub(crate) fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let err = anyhow::Error::new(io)
            .context("cannot listen on 127.0.0.1:1: Address already in use")
            .context("cannot start node");
        assert_eq!(
            error_text(&err),
            "cannot start node: cannot listen on 127.0.0.1:1: Address already in use"
        );
        let err = anyhow::anyhow!("root").context("outer");
        assert_eq!(error_text(&err), "outer: root");
    }
}
