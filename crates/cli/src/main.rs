//! `dqlite-rs`: one binary with a subcommand per job. Each subcommand lives
//! in its own module; this file only parses arguments and dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Interactive SQL shell for any dqlite-protocol cluster.
    Shell(shell::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Shell(args) => shell::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
