//! `consensus-bench`: proposals per second through a 3-node service on
//! loopback with real fsync, at several numbers of concurrent proposers,
//! reporting how many entries each log fsync carried (group commit).
//!
//! `cargo run --release -p dqlite-consensus --bin consensus-bench -- --proposers 1,64 --seconds 5`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use dqlite_consensus::kv::{KvCommand, KvState};
use dqlite_consensus::{Config, Role, Service};

#[derive(Parser)]
struct Args {
    /// Concurrent proposers, comma separated.
    #[arg(long, default_value = "1,64")]
    proposers: String,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Parent directory for the nodes' data (must be on a real disk).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = tempfile_dir(&args.dir)?;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut c = Config::new("127.0.0.1:0", root.join(format!("n{i}")));
        c.network_latency = Duration::from_millis(20);
        nodes.push(Service::start(c, KvState::new()).await?);
    }
    nodes[0].init().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nodes[0].is_leader() {
        anyhow::ensure!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in &nodes[1..] {
        n.join(nodes[0].address()).await?;
    }
    while !nodes[0].membership().iter().all(|n| n.role == Role::Voter)
        || nodes[0].membership().len() < 3
    {
        anyhow::ensure!(
            Instant::now() < deadline + Duration::from_secs(20),
            "no promotion"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "3 voters on loopback, real fsync, {} B values, {} s per run",
        args.value_size, args.seconds
    );
    println!("| proposers | proposals/s | mean latency | leader entries/fsync | follower entries/fsync |");
    println!("| --- | --- | --- | --- | --- |");
    let value = "x".repeat(args.value_size);
    for p in args.proposers.split(',') {
        let proposers: usize = p.trim().parse()?;
        let leader = nodes[0].clone();
        let (le0, ls0) = nodes[0].io_counts();
        let (fe0, fs0) = nodes[1].io_counts();
        let done = Arc::new(AtomicU64::new(0));
        let latency_us = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let end = start + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for t in 0..proposers {
            let (leader, done, latency_us, value) = (
                leader.clone(),
                done.clone(),
                latency_us.clone(),
                value.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                // Bounded by the run's end time.
                while Instant::now() < end {
                    let cmd = KvCommand::Set {
                        key: format!("p{t}-{}", i % 100),
                        value: value.clone(),
                    };
                    let t0 = Instant::now();
                    if let Ok(true) = leader.exec(cmd.encode(), Duration::from_secs(10)).await {
                        done.fetch_add(1, Ordering::Relaxed);
                        latency_us.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        let (le1, ls1) = nodes[0].io_counts();
        let (fe1, fs1) = nodes[1].io_counts();
        let ratio = |e: u64, s: u64| if s == 0 { 0.0 } else { e as f64 / s as f64 };
        println!(
            "| {proposers} | {:.0} | {:.2} ms | {:.1} | {:.1} |",
            n as f64 / secs,
            latency_us.load(Ordering::Relaxed) as f64 / n.max(1) as f64 / 1000.0,
            ratio(le1 - le0, ls1 - ls0),
            ratio(fe1 - fe0, fs1 - fs0),
        );
    }
    for n in &nodes {
        n.stop().await;
    }
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

fn tempfile_dir(parent: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let dir = parent.join(format!("consensus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
