//! `dqlite-rs shell`: an interactive SQL shell for any dqlite-protocol
//! cluster, like go-dqlite's `dqlite`. A thin layer over `dqlite-client`.
//!
//! Layout:
//! - `command`: what a line asks for (dot-command, query or statement).
//! - `format`: tabular and JSON output, streamed.
//! - `session`: runs commands against the cluster.
//! - this file: arguments, and where lines come from (`-c`, a terminal
//!   with line editing and history, or standard input).
//!
//! Each line is one command. SQL whose first keyword is SELECT, PRAGMA,
//! WITH, EXPLAIN or VALUES, or that has a RETURNING clause, runs as a
//! query and its rows are printed; anything else runs as a statement
//! (EXEC_SQL, so several statements may share a line). See
//! `command::returns_rows` for why the shell decides from the words.
//!
//! Exit status: 0, or 1 if a `-c` command failed, or if any line read
//! from a non-terminal standard input failed (the session goes on after
//! an error either way, printing `Error: <message>`).

mod command;
mod format;
mod session;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dqlite_client::Config;
use rustyline::error::ReadlineError;

use self::command::parse;
use self::format::Format;
use self::session::{Flow, Session};

/// Shell arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated server addresses.
    #[arg(short = 's', long = "servers", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value = "tabular")]
    pub format: Format,
    /// Run this command (SQL or a dot-command) and exit.
    #[arg(short = 'c', long = "command")]
    pub command: Option<String>,
    /// Seconds to look for the leader before a command fails.
    #[arg(long = "timeout", default_value_t = 10)]
    pub timeout: u64,
    /// Database name.
    pub database: String,
    /// A command to run and exit, as the `dqlite` shell takes it.
    #[arg(conflicts_with = "command")]
    pub positional_command: Option<String>,
}

const PROMPT: &str = "dqlite> ";
const HISTORY_FILE: &str = ".dqlite-rs_history";
/// Lines kept in the history file.
const HISTORY_MAX: usize = 1000;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut config = Config::default();
    config.connect_timeout = Duration::from_secs(args.timeout.max(1));
    let mut session = Session::new(args.servers, args.database, args.format, config);

    if let Some(line) = args.command.or(args.positional_command) {
        let ok = run_line(&runtime, &mut session, &line).0;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if std::io::stdin().is_terminal() {
        interactive(&runtime, &mut session)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read standard input")?;
        let (ok, flow) = run_line(&runtime, &mut session, &line);
        failed |= !ok;
        if flow == Flow::Quit {
            break;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs one line; prints its error. Returns whether it succeeded.
fn run_line(runtime: &tokio::runtime::Runtime, session: &mut Session, line: &str) -> (bool, Flow) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = parse(line).and_then(|command| runtime.block_on(session.run(command, &mut out)));
    let _ = out.flush();
    match result {
        Ok(flow) => (true, flow),
        Err(err) => {
            eprintln!("Error: {err:#}");
            (false, Flow::Continue)
        }
    }
}

fn interactive(runtime: &tokio::runtime::Runtime, session: &mut Session) -> anyhow::Result<()> {
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_MAX)
        .context("bad history size")?
        .auto_add_history(true)
        .build();
    let mut editor =
        rustyline::DefaultEditor::with_config(config).context("cannot start line editing")?;
    let history = history_path();
    if let Some(path) = &history {
        // A missing or unreadable history is not worth stopping for.
        if let Err(err) = editor.load_history(path) {
            tracing::debug!(path = %path.display(), error = %err, "no shell history loaded");
        }
    }
    // Each line is read, run and forgotten; the loop ends on .quit or EOF.
    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                if run_line(runtime, session, &line).1 == Flow::Quit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(err) => return Err(err).context("cannot read the terminal"),
        }
    }
    if let Some(path) = &history {
        if let Err(err) = editor.save_history(path) {
            eprintln!("warning: cannot save history to {}: {err}", path.display());
        }
    }
    Ok(())
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE))
}
