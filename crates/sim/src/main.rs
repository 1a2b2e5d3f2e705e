//! `dqlite-sim`: the deterministic simulator's command line.
//!
//! ```text
//! dqlite-sim --seeds N [--start S] [--jobs J]   run seeds S..S+N
//! dqlite-sim --seed S [--trace]                 replay one seed exactly
//! --node raftrs|consensus|store                 what each node runs
//! --broken none|ack-before-commit|send-before-fsync|apply-twice|skip-base-check|long-lease
//! ```
//!
//! Output of a multi-seed run: one `FAIL seed=S: <failure>` line per failing
//! seed as it finishes, then a summary line `N passed, M failed` alone on a
//! line, then `failing seeds: ...` and a replay command if any failed. A
//! replay prints `seed=S` and the options derived from it first, then the
//! run's statistics and trace hash, and on failure the last trace lines and
//! the command to replay it. Exit status: 0 if every seed passed, 1 if not.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use dqlite_sim::checker::linearizability::CheckError;
use dqlite_sim::cluster::{Failure, Report};
use dqlite_sim::raftrs::Broken;
use dqlite_sim::runner::{run_many, run_seed, NodeKind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Node {
    /// raft-rs `RawNode` over `MemStorage` (reference node).
    Raftrs,
    /// The consensus crate's core, log and snapshots on the simulated disk.
    Consensus,
    /// The consensus node running the real replicated SQLite store under
    /// SQL workloads (register, bank or set, by seed).
    Store,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Bug {
    /// Correct nodes.
    None,
    /// Canary: acknowledge writes before they commit.
    AckBeforeCommit,
    /// Canary: report log writes durable before fsync (consensus node).
    SendBeforeFsync,
    /// Canary: the store applies an entry twice on the node that built it
    /// (store node).
    ApplyTwice,
    /// Canary: the store skips the base check and applies stale entries
    /// (store node).
    SkipBaseCheck,
    /// Canary: read leases last three election timeouts and outlive the
    /// leadership they were granted to (consensus and store nodes; turns
    /// leases on).
    LongLease,
}

/// Deterministic simulator for the dqlite-rs consensus service.
#[derive(Debug, Parser)]
#[command(name = "dqlite-sim", version)]
struct Args {
    /// Run this many seeds (start, start+1, ...).
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// First seed of a multi-seed run.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads for a multi-seed run.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Print every trace line of a replay to stderr.
    #[arg(long)]
    trace: bool,
    /// Node implementation to drive.
    #[arg(long, value_enum, default_value = "consensus")]
    node: Node,
    /// Deliberate bug to plant (canary runs that must fail).
    #[arg(long, value_enum, default_value = "none")]
    broken: Bug,
}

fn kind(node: Node) -> NodeKind {
    match node {
        Node::Raftrs => NodeKind::RaftRs,
        Node::Consensus => NodeKind::Consensus,
        Node::Store => NodeKind::Store,
    }
}

fn broken(bug: Bug) -> Broken {
    match bug {
        Bug::None => Broken::None,
        Bug::AckBeforeCommit => Broken::AckBeforeCommit,
        Bug::SendBeforeFsync => Broken::SendBeforeFsync,
        Bug::ApplyTwice => Broken::ApplyTwice,
        Bug::SkipBaseCheck => Broken::SkipBaseCheck,
        Bug::LongLease => Broken::LongLease,
    }
}

fn flags(args: &Args) -> String {
    let mut out = String::new();
    if let Some(v) = args.node.to_possible_value() {
        if !matches!(args.node, Node::Consensus) {
            out.push_str(&format!(" --node {}", v.get_name()));
        }
    }
    if let Some(v) = args.broken.to_possible_value() {
        if !matches!(args.broken, Bug::None) {
            out.push_str(&format!(" --broken {}", v.get_name()));
        }
    }
    out
}

fn replay_command(seed: u64, args: &Args) -> String {
    format!(
        "cargo run --release --bin dqlite-sim -- --seed {seed}{}",
        flags(args)
    )
}

fn summary(report: &Report) -> String {
    format!(
        "events={} operations={} completed={} committed={} leader_terms={} simulated_ms={} trace_hash={:016x}",
        report.events,
        report.operations,
        report.completed,
        report.committed,
        report.leader_terms,
        report.simulated_ms,
        report.trace_hash
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    // raft-rs asserts print through the panic hook; a failing seed reports
    // its panic message itself, so keep the hook quiet.
    std::panic::set_hook(Box::new(|_| {}));
    if let Some(seed) = args.seed {
        let report = run_seed(seed, kind(args.node), broken(args.broken), args.trace);
        println!("seed={seed}");
        println!("options={:?}", report.options);
        println!("{}", summary(&report));
        return match &report.result {
            Ok(()) => {
                println!("1 passed, 0 failed");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                println!("last trace lines:");
                for line in &report.trace_tail {
                    println!("  {line}");
                }
                if let Failure::Linearizability(CheckError::NotLinearizable {
                    operations, ..
                }) = failure
                {
                    println!("operations on that key:");
                    for op in operations {
                        println!("  {op:?}");
                    }
                }
                println!("FAIL seed={seed}: {failure}");
                println!("0 passed, 1 failed");
                println!("replay: {}", replay_command(seed, &args));
                ExitCode::FAILURE
            }
        };
    }
    let count = args.seeds.unwrap_or(100);
    let seeds: Vec<u64> = (args.start..args.start.saturating_add(count)).collect();
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    let on_report = |report: &Report| {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Err(failure) = &report.result {
            println!("FAIL seed={}: {failure}", report.options.seed);
        }
        if n % 1000 == 0 {
            eprintln!("{n} seeds in {:.1}s", started.elapsed().as_secs_f64());
        }
    };
    let reports = run_many(
        &seeds,
        kind(args.node),
        broken(args.broken),
        args.jobs,
        &on_report,
    );
    let failing: Vec<u64> = reports
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.options.seed)
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{} seeds in {elapsed:.1}s ({:.1} seeds/s, {} jobs)",
        reports.len(),
        reports.len() as f64 / elapsed.max(1e-9),
        args.jobs
    );
    println!(
        "{} passed, {} failed",
        reports.len() - failing.len(),
        failing.len()
    );
    if failing.is_empty() {
        return ExitCode::SUCCESS;
    }
    let list: Vec<String> = failing.iter().map(u64::to_string).collect();
    println!("failing seeds: {}", list.join(" "));
    println!("replay: {}", replay_command(failing[0], &args));
    ExitCode::FAILURE
}
