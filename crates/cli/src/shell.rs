//! `dqlite-rs shell`: an interactive SQL shell for any dqlite-protocol
//! cluster, like go-dqlite's `dqlite`. A thin layer over `dqlite-client`.
//!
//! Layout:
//! - `command`: what a line asks for (dot-command, query or statement).
//! - `format`: tabular and JSON output, streamed.
//! - `session`: runs commands against the cluster.
//! - this file: arguments, and where lines come from (`--command`, a terminal
//!   with line editing and history, or standard input).
//!
//! Input is cut as SQLite's shell cuts it: SQL accumulates until a
//! statement is complete (`complete`: a `;` outside quotes and comments,
//! `END;` for a trigger), with a continuation prompt, and every complete
//! statement runs in order, so several may share a line. A line starting
//! with `.` when no statement is pending is a dot-command. Whatever is
//! left unfinished at the end of `--command`, a piped script or a `.read` file
//! runs as a last statement. A statement whose first keyword is SELECT,
//! PRAGMA, WITH, EXPLAIN or VALUES, or that has a RETURNING clause, runs
//! as a query and its rows are printed; anything else runs as a statement
//! (see `command::returns_rows` for why the shell decides from the words).
//!
//! Ctrl-C at the prompt drops the pending input; while a statement runs
//! it stops it (see `session`) and skips the rest of the line or file.
//! Ctrl-D at the prompt leaves.
//!
//! Exit status: 0, or 1 if a command from `--command` or a non-terminal standard
//! input failed (the session goes on after an error either way, printing
//! `Error: <message>`).

mod command;
mod complete;
mod format;
mod session;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use dqlite_client::Config;
use rustyline::error::ReadlineError;

use self::command::{parse, statement, Command};
use self::format::Format;
use self::session::{Flow, Session};

/// Shell arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated server addresses.
    #[arg(short = 's', long = "servers", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,
    /// Output format (`.mode` changes it in a session).
    #[arg(short = 'f', long = "format", value_enum, default_value = "tabular")]
    pub format: Format,
    /// Run this SQL (one or more statements) or dot-command and exit.
    /// (`-c` is the TLS certificate, as in Debian's `dqlite`.)
    #[arg(long = "command")]
    pub command: Option<String>,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Seconds to look for the leader before a command fails.
    #[arg(long = "timeout", default_value_t = 10)]
    pub timeout: u64,
    /// Where reads may be served: `leader` (default), `follower`
    /// (linearizable reads on the first listed node, which need not lead)
    /// or `stale:MS` (reads at most MS milliseconds old there). Sent as
    /// `PRAGMA dqlite_read_mode` on every connection the shell opens.
    #[arg(long = "read-mode", default_value = "leader")]
    pub read_mode: dqlite_client::ReadMode,
    /// Database name.
    pub database: String,
    /// A command to run and exit, as the `dqlite` shell takes it.
    #[arg(conflicts_with = "command")]
    pub positional_command: Option<String>,
}

/// The prompt, and the one shown while a statement is unfinished.
const PROMPT: &str = "dqlite-rs> ";
const CONTINUATION: &str = "      ...> ";
const HISTORY_FILE: &str = ".dqlite-rs_history";
/// Lines kept in the history file.
const HISTORY_MAX: usize = 1000;
/// How deep `.read` may nest, so a file that reads itself ends.
const READ_DEPTH_MAX: usize = 16;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The worker thread runs the Ctrl-C listener while the main thread
    // is busy (or blocked writing rows to the terminal).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut config = Config::default();
    config.connect_timeout = Duration::from_secs(args.timeout.max(1));
    config.read_mode = args.read_mode;
    args.tls.apply(&mut config)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    let session = Session::new(
        args.servers,
        args.database,
        args.format,
        config,
        interrupt.clone(),
    );
    let mut shell = Shell {
        runtime,
        session,
        interrupt,
        failed: false,
        depth: 0,
    };

    if let Some(text) = args.command.or(args.positional_command) {
        shell.run_lines(text.lines().map(|l| Ok(l.to_owned())))?;
    } else if std::io::stdin().is_terminal() {
        shell.interactive()?;
        return Ok(ExitCode::SUCCESS);
    } else {
        let lines = std::io::stdin().lock().lines();
        shell.run_lines(lines.map(|l| l.context("cannot read standard input")))?;
    }
    Ok(if shell.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Input not yet run: the start of an unfinished statement.
#[derive(Default)]
struct Input {
    pending: String,
}

impl Input {
    /// Adds a line; returns the commands it completes, in order.
    fn line(&mut self, line: &str) -> Vec<anyhow::Result<Command>> {
        if self.pending.is_empty() && line.trim_start().starts_with('.') {
            return vec![parse(line)];
        }
        self.pending.push_str(line);
        self.pending.push('\n');
        let split = complete::split(&self.pending);
        let commands = split.statements.iter().map(|s| Ok(statement(s))).collect();
        self.pending = split.rest.to_owned();
        commands
    }

    /// The unfinished statement, at the end of the input.
    fn finish(&mut self) -> Option<Command> {
        let pending = std::mem::take(&mut self.pending);
        (!pending.trim().is_empty()).then(|| statement(&pending))
    }
}

struct Shell {
    runtime: tokio::runtime::Runtime,
    session: Session,
    /// Set by Ctrl-C (interactive sessions only).
    interrupt: Arc<AtomicBool>,
    /// A command failed.
    failed: bool,
    /// `.read` nesting.
    depth: usize,
}

impl Shell {
    /// Runs one command, printing its error.
    fn run(&mut self, command: anyhow::Result<Command>) -> Flow {
        let result = command.and_then(|command| match command {
            Command::Read(path) => self.read(&path),
            command => {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                let result = self.runtime.block_on(self.session.run(command, &mut out));
                let _ = out.flush();
                result
            }
        });
        match result {
            Ok(flow) => flow,
            Err(err) => {
                eprintln!("Error: {}", crate::error_text(&err));
                self.failed = true;
                Flow::Continue
            }
        }
    }

    /// Feeds one line and runs the statements it completes; after Ctrl-C
    /// the rest are skipped.
    fn feed(&mut self, input: &mut Input, line: &str) -> Flow {
        for command in input.line(line) {
            if self.interrupt.load(Ordering::Relaxed) {
                break;
            }
            if self.run(command) == Flow::Quit {
                return Flow::Quit;
            }
        }
        Flow::Continue
    }

    /// Runs lines to their end (or `.quit`, or Ctrl-C), then whatever
    /// statement they left unfinished.
    fn run_lines(
        &mut self,
        lines: impl Iterator<Item = anyhow::Result<String>>,
    ) -> anyhow::Result<Flow> {
        let mut input = Input::default();
        for line in lines {
            if self.interrupt.load(Ordering::Relaxed) {
                return Ok(Flow::Continue);
            }
            if self.feed(&mut input, &line?) == Flow::Quit {
                return Ok(Flow::Quit);
            }
        }
        Ok(match input.finish() {
            Some(command) => self.run(Ok(command)),
            None => Flow::Continue,
        })
    }

    /// `.read FILE`: its `.quit` ends the file, not the session.
    fn read(&mut self, path: &Path) -> anyhow::Result<Flow> {
        if self.depth >= READ_DEPTH_MAX {
            bail!(
                "cannot read {}: .read is nested more than {READ_DEPTH_MAX} deep",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        self.depth += 1;
        let result = self.run_lines(text.lines().map(|l| Ok(l.to_owned())));
        self.depth -= 1;
        result.map(|_| Flow::Continue)
    }

    fn interactive(&mut self) -> anyhow::Result<()> {
        // Ctrl-C while a statement runs arrives as SIGINT (the terminal is
        // in raw mode, and Ctrl-C a key, only while a line is edited).
        let flag = self.interrupt.clone();
        self.runtime.spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
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
        let mut input = Input::default();
        // The loop ends on .quit or Ctrl-D.
        loop {
            let prompt = if input.pending.is_empty() {
                PROMPT
            } else {
                CONTINUATION
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    self.interrupt.store(false, Ordering::Relaxed);
                    if self.feed(&mut input, &line) == Flow::Quit {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => input = Input::default(),
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
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE))
}
