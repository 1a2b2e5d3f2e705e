//! `dqlite-rs bench`: the key/value workloads of go-dqlite's
//! `dqlite-benchmark`, run against any dqlite-protocol cluster (dqlite-rs,
//! or C dqlite started with Debian's `dqlite-demo`).
//!
//! The workloads, as `dqlite-benchmark` defines them:
//! - table `model (key TEXT, value TEXT, UNIQUE(key))`, created with
//!   `CREATE TABLE IF NOT EXISTS` before the run;
//! - `kvwrite`: every operation is `INSERT OR REPLACE INTO model(key, value)
//!   VALUES(?, ?)` with a new random key;
//! - `kvreadwrite`: a coin flip per operation; heads (once the worker has
//!   written a key) reads `SELECT value FROM model WHERE key = ?` for a
//!   random key this worker wrote, tails writes as `kvwrite` does;
//! - keys are `--key-size` random ASCII letters; values are `--value-size`
//!   bytes of text, the first half one repeated letter and the second half
//!   random letters (half compressible, half not).
//!
//! Ours, for follower reads: `kvread` writes `--keys` keys before the clock
//! starts and then only reads (`kvreadwrite`'s read) a random one of them.
//!
//! Each worker has its own connection, found by leader discovery among
//! `-s`. With `--read-mode follower` or `stale:MS` its reads go instead to
//! a connection to one node, worker *i* to the *i*-th listed node (modulo
//! their number), so reads spread over every node; its writes go to a
//! second connection, to the leader. An operation is retried on `SQLITE_BUSY` (after a short, growing,
//! jittered pause) and after a leadership or transport error (the
//! connection is dropped and the leader found again), as go-dqlite's
//! `database/sql` driver does with `ErrBadConn`; both are counted. A write
//! is safe to re-run because `INSERT OR REPLACE` is idempotent. Any other
//! error counts as a failed operation and the worker moves on. The latency
//! of an operation runs from its first attempt to its success, retries
//! included.
//!
//! The clock starts once every worker is connected and the table exists;
//! workers start no operation after `--duration`, and an operation still
//! retrying then is abandoned and counted as unfinished. Progress goes to
//! stderr every `--progress` seconds (default: every second for runs under
//! a minute, else every 5 s); the summary goes to stdout, as text or as one
//! JSON line with `--json`. Writes whose outcome is unknown (leadership
//! lost, or the connection closed mid-write) are counted apart.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dqlite_client::{Config, Database, Error, ReadMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The table, as `dqlite-benchmark` creates it.
pub const KV_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS model (key TEXT, value TEXT, UNIQUE(key))";
/// One write.
pub const KV_WRITE_SQL: &str = "INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)";
/// One read.
pub const KV_READ_SQL: &str = "SELECT value FROM model WHERE key = ?";

/// How long an operation may run past the end of the run before it is
/// abandoned.
const OVERRUN_GRACE: Duration = Duration::from_secs(10);
/// Limit for one request (the client's default is 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for one leader discovery after a leadership or transport error.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed reconnection before the next one.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// First pause after `SQLITE_BUSY`; it doubles up to [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE_BASE: Duration = Duration::from_millis(1);
/// Longest pause after `SQLITE_BUSY`.
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(32);

const MAX_WORKERS: usize = 1024;
const MAX_DURATION_SECS: f64 = 7.0 * 24.0 * 3600.0;
const MAX_KEY_SIZE: usize = 1 << 20;
const MAX_KEYS: usize = 10_000_000;
/// Keys `kvread` writes per statement while filling the table.
const FILL_BATCH: usize = 100;
/// Values travel in one message; keep well under the server's limit.
const MAX_VALUE_SIZE: usize = 16 << 20;

/// The workloads of `dqlite-benchmark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Writes only: INSERT OR REPLACE of a new random key.
    Kvwrite,
    /// Half reads of keys this worker wrote, half writes.
    Kvreadwrite,
    /// Reads only, of `--keys` keys written before the clock starts.
    Kvread,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Kvwrite => "kvwrite",
            Workload::Kvreadwrite => "kvreadwrite",
            Workload::Kvread => "kvread",
        }
    }
}

/// Benchmark arguments (names and defaults as `dqlite-benchmark`'s).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated server addresses; the leader is found among them.
    #[arg(short = 's', long = "servers", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,
    /// The workload to run.
    #[arg(short = 'w', long, value_enum, default_value = "kvwrite")]
    pub workload: Workload,
    /// Number of workers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run duration in seconds (fractions allowed).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Size of the keys in bytes.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Size of the values in bytes.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Database name (`dqlite-demo` uses "demo" for itself: pick another).
    #[arg(long, default_value = "benchmark")]
    pub database: String,
    /// Seconds to wait for the cluster before the clock starts (finding the
    /// leader, creating the table, connecting every worker).
    #[arg(long, default_value_t = 30.0)]
    pub setup_timeout: f64,
    /// Seconds between progress lines on stderr; 0 for none. Default: 1
    /// for runs shorter than a minute, else 5.
    #[arg(long)]
    pub progress: Option<f64>,
    /// Print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Where reads are served: `leader` (default), `follower` (linearizable
    /// reads on every node) or `stale:MS` (reads at most MS ms old on every
    /// node); see `PRAGMA dqlite_read_mode`.
    #[arg(long, default_value = "leader")]
    pub read_mode: ReadMode,
    /// Keys `kvread` writes before the clock starts.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Validated arguments.
#[derive(Debug, Clone)]
struct Settings {
    servers: Vec<String>,
    workload: Workload,
    workers: usize,
    duration: Duration,
    key_size: usize,
    value_size: usize,
    database: String,
    setup_timeout: Duration,
    progress: Option<Duration>,
    json: bool,
    read_mode: ReadMode,
    keys: usize,
    /// Connection settings every client starts from (TLS).
    base: Config,
}

impl Settings {
    fn from_args(args: Args) -> Result<Settings, String> {
        let servers: Vec<String> = args
            .servers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err("-s needs at least one server address".into());
        }
        if args.workers == 0 || args.workers > MAX_WORKERS {
            return Err(format!(
                "--workers must be between 1 and {MAX_WORKERS}, not {}",
                args.workers
            ));
        }
        if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= MAX_DURATION_SECS)
        {
            return Err(format!(
                "--duration must be a number of seconds above 0 and at most {MAX_DURATION_SECS}, not {}",
                args.duration
            ));
        }
        if args.key_size == 0 || args.key_size > MAX_KEY_SIZE {
            return Err(format!(
                "--key-size must be between 1 and {MAX_KEY_SIZE}, not {}",
                args.key_size
            ));
        }
        if args.value_size > MAX_VALUE_SIZE {
            return Err(format!(
                "--value-size must be at most {MAX_VALUE_SIZE}, not {}",
                args.value_size
            ));
        }
        if args.keys == 0 || args.keys > MAX_KEYS {
            return Err(format!(
                "--keys must be between 1 and {MAX_KEYS}, not {}",
                args.keys
            ));
        }
        if args.database.is_empty() {
            return Err("--database must not be empty".into());
        }
        if !(args.setup_timeout.is_finite()
            && args.setup_timeout > 0.0
            && args.setup_timeout <= MAX_DURATION_SECS)
        {
            return Err(format!(
                "--setup-timeout must be a number of seconds above 0, not {}",
                args.setup_timeout
            ));
        }
        // A short run gets a line a second, so it never looks stuck.
        let progress = args
            .progress
            .unwrap_or(if args.duration < 60.0 { 1.0 } else { 5.0 });
        if !(progress.is_finite() && progress >= 0.0) {
            return Err(format!(
                "--progress must be a number of seconds (0 for none), not {progress}"
            ));
        }
        let mut base = Config::default();
        args.tls.apply(&mut base).map_err(|e| format!("{e:#}"))?;
        Ok(Settings {
            base,
            servers,
            workload: args.workload,
            workers: args.workers,
            duration: Duration::from_secs_f64(args.duration),
            key_size: args.key_size,
            value_size: args.value_size,
            database: args.database,
            setup_timeout: Duration::from_secs_f64(args.setup_timeout),
            progress: (progress > 0.0).then(|| Duration::from_secs_f64(progress)),
            json: args.json,
            read_mode: args.read_mode,
            keys: args.keys,
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(args).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(execute(&settings))?;
    if settings.json {
        println!("{}", report.to_json(&settings));
    } else {
        print!("{}", report.to_text(&settings));
    }
    if report.ops() == 0 {
        bail!(
            "no operation succeeded{}",
            report
                .first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// Keys, values and the choice of operation

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn random_letter(rng: &mut impl Rng) -> char {
    char::from(LETTERS[rng.gen_range(0..LETTERS.len())])
}

fn random_letters(rng: &mut impl Rng, n: usize) -> String {
    (0..n).map(|_| random_letter(rng)).collect()
}

/// A new key: `size` random ASCII letters.
fn new_key(rng: &mut impl Rng, size: usize) -> String {
    random_letters(rng, size)
}

/// A value of exactly `size` bytes: one random letter repeated for the
/// first half (rounded up), random letters for the rest.
fn new_value(rng: &mut impl Rng, size: usize) -> String {
    let random = size / 2;
    let mut value = random_letter(rng).to_string().repeat(size - random);
    value.push_str(&random_letters(rng, random));
    value
}

/// One operation of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Write { key: String, value: String },
    Read { key: String },
}

/// The next operation: `kvwrite` always writes; `kvreadwrite` reads one of
/// `written` on heads (if there is one) and writes otherwise.
fn next_op(
    workload: Workload,
    rng: &mut impl Rng,
    written: &[String],
    key_size: usize,
    value_size: usize,
) -> Op {
    let read = match workload {
        Workload::Kvwrite => false,
        Workload::Kvreadwrite => rng.gen_bool(0.5),
        Workload::Kvread => true,
    };
    if read && !written.is_empty() {
        let key = written[rng.gen_range(0..written.len())].clone();
        return Op::Read { key };
    }
    Op::Write {
        key: new_key(rng, key_size),
        value: new_value(rng, value_size),
    }
}

/// The pause before retry `attempt` (0-based) after `SQLITE_BUSY`:
/// base · 2^attempt capped at the maximum, scaled by `jitter` in [0.5, 1].
fn busy_pause(attempt: u32, jitter: f64) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    let pause = BUSY_PAUSE_BASE.saturating_mul(factor).min(BUSY_PAUSE_MAX);
    pause.mul_f64(jitter.clamp(0.5, 1.0))
}

// ---------------------------------------------------------------------------
// Latency statistics

/// Nearest-rank percentile `p` (0..=100) of ascending `sorted`; 0 when
/// empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Latency summary of a set of operations, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Latency {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

impl Latency {
    fn of(mut samples: Vec<u64>) -> Latency {
        samples.sort_unstable();
        Latency {
            count: samples.len() as u64,
            p50: percentile(&samples, 50.0),
            p90: percentile(&samples, 90.0),
            p99: percentile(&samples, 99.0),
            max: samples.last().copied().unwrap_or(0),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "p50": ms(self.p50),
            "p90": ms(self.p90),
            "p99": ms(self.p99),
            "max": ms(self.max),
        })
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Nanoseconds to milliseconds, rounded to the microsecond.
fn ms(nanos: u64) -> f64 {
    (nanos as f64 / 1000.0).round() / 1000.0
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (count as f64 / secs * 10.0).round() / 10.0
}

// ---------------------------------------------------------------------------
// The run

/// Counters shared with the progress line.
#[derive(Debug, Default)]
struct Counters {
    ops: AtomicU64,
    busy_retries: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    unknown_outcomes: AtomicU64,
}

/// What one worker measured.
#[derive(Debug, Default)]
struct WorkerReport {
    writes: Vec<u64>,
    reads: Vec<u64>,
    busy_retries: u64,
    reconnects: u64,
    errors: u64,
    unfinished: u64,
    first_error: Option<String>,
    /// Writes that may or may not have been applied (leadership lost or
    /// the connection closed while they were in flight).
    unknown_outcomes: u64,
    first_unknown: Option<String>,
}

impl WorkerReport {
    fn unknown_outcome(&mut self, counters: &Counters, err: &Error) {
        self.unknown_outcomes += 1;
        counters.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
        if self.first_unknown.is_none() {
            self.first_unknown = Some(err.to_string());
        }
    }

    fn error(&mut self, counters: &Counters, err: impl std::fmt::Display) {
        self.errors += 1;
        counters.errors.fetch_add(1, Ordering::Relaxed);
        if self.first_error.is_none() {
            self.first_error = Some(err.to_string());
        }
    }
}

/// The whole run.
#[derive(Debug)]
struct Report {
    elapsed: Duration,
    writes: Latency,
    reads: Latency,
    all: Latency,
    busy_retries: u64,
    reconnects: u64,
    errors: u64,
    unfinished: u64,
    first_error: Option<String>,
    unknown_outcomes: u64,
    first_unknown: Option<String>,
}

impl Report {
    fn merge(workers: Vec<WorkerReport>, elapsed: Duration) -> Report {
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        let (mut busy_retries, mut reconnects, mut errors, mut unfinished) = (0, 0, 0, 0);
        let mut first_error = None;
        let (mut unknown_outcomes, mut first_unknown) = (0, None);
        for w in workers {
            unknown_outcomes += w.unknown_outcomes;
            if first_unknown.is_none() {
                first_unknown = w.first_unknown;
            }
            writes.extend(w.writes);
            reads.extend(w.reads);
            busy_retries += w.busy_retries;
            reconnects += w.reconnects;
            errors += w.errors;
            unfinished += w.unfinished;
            if first_error.is_none() {
                first_error = w.first_error;
            }
        }
        let all = Latency::of(writes.iter().chain(reads.iter()).copied().collect());
        Report {
            elapsed,
            writes: Latency::of(writes),
            reads: Latency::of(reads),
            all,
            busy_retries,
            reconnects,
            errors,
            unfinished,
            first_error,
            unknown_outcomes,
            first_unknown,
        }
    }

    fn ops(&self) -> u64 {
        self.all.count
    }

    fn to_json(&self, s: &Settings) -> serde_json::Value {
        let kind = |l: &Latency| {
            json!({
                "count": l.count,
                "ops_per_sec": per_second(l.count, self.elapsed),
                "latency_ms": l.json(),
            })
        };
        json!({
            "workload": s.workload.name(),
            "read_mode": s.read_mode.to_string(),
            "servers": s.servers.join(","),
            "database": s.database,
            "workers": s.workers,
            "duration_s": s.duration.as_secs_f64(),
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "key_size": s.key_size,
            "value_size": s.value_size,
            "ops": self.ops(),
            "ops_per_sec": per_second(self.ops(), self.elapsed),
            "latency_ms": self.all.json(),
            "writes": kind(&self.writes),
            "reads": kind(&self.reads),
            "busy_retries": self.busy_retries,
            "reconnects": self.reconnects,
            "errors": self.errors,
            "unfinished": self.unfinished,
            "first_error": self.first_error,
            "unknown_outcomes": self.unknown_outcomes,
        })
    }

    fn to_text(&self, s: &Settings) -> String {
        let mut out = format!(
            "workload {}, read mode {}, {} worker{}, {:.1} s, keys {} B, values {} B, servers {}, database {}\n",
            s.workload.name(),
            s.read_mode,
            s.workers,
            if s.workers == 1 { "" } else { "s" },
            s.duration.as_secs_f64(),
            s.key_size,
            s.value_size,
            s.servers.join(","),
            s.database,
        );
        out += &format!(
            "ops     {:>9} in {:.2} s: {:.1} ops/s  {}\n",
            self.ops(),
            self.elapsed.as_secs_f64(),
            per_second(self.ops(), self.elapsed),
            self.all.text()
        );
        for (name, l) in [("writes", &self.writes), ("reads", &self.reads)] {
            if l.count > 0 {
                out += &format!(
                    "{name:<7} {:>9}: {:.1}/s  {}\n",
                    l.count,
                    per_second(l.count, self.elapsed),
                    l.text()
                );
            }
        }
        out += &format!(
            "busy retries {}, reconnects {}, errors {}, unfinished {}\n",
            self.busy_retries, self.reconnects, self.errors, self.unfinished
        );
        if let Some(err) = &self.first_error {
            out += &format!("first error: {err}\n");
        }
        if self.unknown_outcomes > 0 {
            out += &format!(
                "writes with an unknown outcome: {} (each may or may not have been applied)\n",
                self.unknown_outcomes
            );
        }
        if let Some(err) = &self.first_unknown {
            out += &format!("first unknown outcome: {err}\n");
        }
        out
    }
}

/// Where a connection goes: the leader (writes, and reads in leader mode),
/// or one node for reads (follower read modes), the `worker`-th listed
/// node first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Leader,
    Reads { worker: usize },
}

impl Target {
    /// The target of `op` for a worker.
    fn of(s: &Settings, worker: usize, op: &Op) -> Target {
        match op {
            Op::Read { .. } if s.read_mode != ReadMode::Leader => Target::Reads { worker },
            _ => Target::Leader,
        }
    }
}

/// Opens a connection to `target` within `timeout`.
async fn connect(s: &Settings, target: Target, timeout: Duration) -> Result<Database, Error> {
    let mut config = client_config(&s.base, timeout);
    match target {
        Target::Leader => Database::connect_with(&s.servers, &s.database, &config).await,
        Target::Reads { worker } => {
            config.read_mode = s.read_mode;
            let mut servers = s.servers.clone();
            servers.rotate_left(worker % s.servers.len());
            Database::connect_with(&servers, &s.database, &config).await
        }
    }
}

fn client_config(base: &Config, connect_timeout: Duration) -> Config {
    let mut config = base.clone();
    config.connect_timeout = connect_timeout.max(Duration::from_millis(100));
    config.attempt_timeout = config.attempt_timeout.min(config.connect_timeout);
    config.dial_timeout = config.dial_timeout.min(config.connect_timeout);
    config.request_timeout = REQUEST_TIMEOUT;
    config
}

/// Connects, creates the table, connects the workers, runs them until the
/// deadline and merges what they measured.
async fn execute(s: &Settings) -> anyhow::Result<Report> {
    let setup_deadline = Instant::now() + s.setup_timeout;
    create_table(s, setup_deadline).await?;
    let keys = if s.workload == Workload::Kvread {
        fill(s, setup_deadline).await?
    } else {
        Vec::new()
    };
    let keys = Arc::new(keys);
    // Each worker's first connection: the one its first kind of operation
    // uses (reads, for kvread in a follower read mode).
    let first_op = match s.workload {
        Workload::Kvread => Op::Read { key: String::new() },
        _ => Op::Write {
            key: String::new(),
            value: String::new(),
        },
    };
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..s.workers {
        let settings = s.clone();
        let target = Target::of(s, i, &first_op);
        let left = setup_deadline.saturating_duration_since(Instant::now());
        connecting.spawn(async move {
            (
                i,
                connect(&settings, target, left)
                    .await
                    .map(|db| (target, db)),
            )
        });
    }
    let mut connections: Vec<Option<(Target, Database)>> = (0..s.workers).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        let (i, db) = joined.context("a connecting task failed")?;
        let db = db.with_context(|| format!("worker {i} cannot connect"))?;
        connections[i] = Some(db);
    }

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut workers = tokio::task::JoinSet::new();
    for (i, first) in connections.into_iter().enumerate() {
        let Some(first) = first else { continue };
        let settings = s.clone();
        let counters = Arc::clone(&counters);
        let keys = Arc::clone(&keys);
        workers.spawn(async move { worker(&settings, i, first, &keys, deadline, &counters).await });
    }
    let progress = s.progress.map(|every| {
        let counters = Arc::clone(&counters);
        tokio::spawn(progress_lines(counters, start, deadline, every))
    });
    let mut reports = Vec::with_capacity(s.workers);
    while let Some(joined) = workers.join_next().await {
        reports.push(joined.context("a worker failed")?);
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(Report::merge(reports, elapsed))
}

/// `CREATE TABLE IF NOT EXISTS`, retried on busy and leadership errors
/// until `deadline`.
async fn create_table(s: &Settings, deadline: Instant) -> anyhow::Result<()> {
    let mut attempt = 0u32;
    loop {
        let config = client_config(&s.base, deadline.saturating_duration_since(Instant::now()));
        let result = match Database::connect_with(&s.servers, &s.database, &config).await {
            Ok(mut db) => db.exec(KV_SCHEMA, ()).await.map(drop),
            Err(err) => Err(err),
        };
        let err = match result {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        // Nothing listening, or not a dqlite node: retrying cannot help.
        let hopeless = matches!(err, Error::Unreachable { .. } | Error::NotDqlite { .. });
        let retry = !hopeless && (matches!(err, Error::Busy { .. }) || err.needs_reconnect());
        if !retry || Instant::now() >= deadline {
            return Err(err)
                .with_context(|| format!("cannot create the table in database {:?}", s.database));
        }
        tokio::time::sleep(busy_pause(attempt, 1.0).max(RECONNECT_PAUSE)).await;
        attempt += 1;
    }
}

/// `kvread`: writes `s.keys` new keys through the leader, in batches, and
/// returns them.
async fn fill(s: &Settings, deadline: Instant) -> anyhow::Result<Vec<String>> {
    let mut rng = StdRng::from_entropy();
    let keys: Vec<String> = (0..s.keys).map(|_| new_key(&mut rng, s.key_size)).collect();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let mut db = connect(s, Target::Leader, timeout)
        .await
        .context("cannot connect to write the keys")?;
    for chunk in keys.chunks(FILL_BATCH) {
        let placeholders = vec!["(?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT OR REPLACE INTO model(key, value) VALUES {placeholders}");
        let mut params: Vec<dqlite_client::Value> = Vec::with_capacity(2 * chunk.len());
        for key in chunk {
            params.push(dqlite_client::Value::Text(key.clone()));
            params.push(dqlite_client::Value::Text(new_value(
                &mut rng,
                s.value_size,
            )));
        }
        db.exec(&sql, params)
            .await
            .context("cannot write the keys kvread reads")?;
    }
    Ok(keys)
}

/// Runs one operation on `db`.
async fn run_op(db: &mut Database, op: &Op) -> Result<(), Error> {
    match op {
        Op::Write { key, value } => {
            db.exec(KV_WRITE_SQL, [key.as_str(), value.as_str()])
                .await?;
            Ok(())
        }
        Op::Read { key } => {
            let rows = db.query(KV_READ_SQL, [key.as_str()]).await?.all().await?;
            if rows.len() != 1 {
                return Err(Error::InvalidArgument(format!(
                    "read of a written key returned {} rows",
                    rows.len()
                )));
            }
            Ok(())
        }
    }
}

/// One worker: operations on its own connection until `deadline`.
async fn worker(
    s: &Settings,
    index: usize,
    first: (Target, Database),
    keys: &[String],
    deadline: Instant,
    counters: &Counters,
) -> WorkerReport {
    let mut rng = StdRng::from_entropy();
    let mut report = WorkerReport::default();
    let mut written: Vec<String> = keys.to_vec();
    // One connection per target: the leader, and in a follower read mode
    // one for reads.
    let (first_target, first_db) = first;
    let mut leader = None;
    let mut reads = None;
    match first_target {
        Target::Leader => leader = Some(first_db),
        Target::Reads { .. } => reads = Some(first_db),
    }
    'ops: while Instant::now() < deadline {
        let op = next_op(s.workload, &mut rng, &written, s.key_size, s.value_size);
        let target = Target::of(s, index, &op);
        let started = Instant::now();
        let mut busy_attempt = 0u32;
        loop {
            let db = match target {
                Target::Leader => &mut leader,
                Target::Reads { .. } => &mut reads,
            };
            if db.is_none() {
                if Instant::now() >= deadline {
                    report.unfinished += 1;
                    break 'ops;
                }
                // Leader discovery stops at the end of the run.
                let left = deadline.saturating_duration_since(Instant::now());
                match connect(s, target, left.min(RECONNECT_TIMEOUT)).await {
                    Ok(new) => *db = Some(new),
                    Err(err) => {
                        report.error(counters, format_args!("reconnect: {err}"));
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                }
            }
            let Some(conn) = db.as_mut() else {
                continue;
            };
            let limit = deadline.saturating_duration_since(Instant::now()) + OVERRUN_GRACE;
            let result = match tokio::time::timeout(limit, run_op(conn, &op)).await {
                Ok(result) => result,
                Err(_) => {
                    report.unfinished += 1;
                    break 'ops;
                }
            };
            match result {
                Ok(()) => {
                    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    counters.ops.fetch_add(1, Ordering::Relaxed);
                    match op {
                        Op::Write { key, .. } => {
                            report.writes.push(nanos);
                            if s.workload == Workload::Kvreadwrite {
                                written.push(key);
                            }
                        }
                        Op::Read { .. } => report.reads.push(nanos),
                    }
                    break;
                }
                Err(Error::Busy { .. }) => {
                    report.busy_retries += 1;
                    counters.busy_retries.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= deadline {
                        report.unfinished += 1;
                        break 'ops;
                    }
                    let pause = busy_pause(busy_attempt, rng.gen_range(0.5..=1.0));
                    tokio::time::sleep(pause).await;
                    busy_attempt += 1;
                }
                Err(err) if err.needs_reconnect() => {
                    if err.outcome_unknown() {
                        report.unknown_outcome(counters, &err);
                    }
                    report.reconnects += 1;
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    *db = None;
                }
                Err(err) => {
                    report.error(counters, err);
                    break;
                }
            }
        }
    }
    report
}

/// A progress line on stderr every `every` until `deadline`.
async fn progress_lines(
    counters: Arc<Counters>,
    start: Instant,
    deadline: Instant,
    every: Duration,
) {
    let mut last_ops = 0;
    let mut last = start;
    loop {
        let next = last + every;
        if next >= deadline {
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        let ops = counters.ops.load(Ordering::Relaxed);
        eprintln!(
            "bench: {:>6.1} s  {ops} ops  {:.1} ops/s (last {:.1} s)  busy retries {}  reconnects {}  errors {}  unknown outcomes {}",
            now.duration_since(start).as_secs_f64(),
            per_second(ops - last_ops, now.duration_since(last)),
            now.duration_since(last).as_secs_f64(),
            counters.busy_retries.load(Ordering::Relaxed),
            counters.reconnects.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
            counters.unknown_outcomes.load(Ordering::Relaxed),
        );
        last_ops = ops;
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::from_args(cli.args)
    }

    #[test]
    fn defaults_are_those_of_dqlite_benchmark() {
        let s = parse(&["-s", "127.0.0.1:9001"]).unwrap();
        assert_eq!(s.servers, ["127.0.0.1:9001"]);
        assert_eq!(s.workload, Workload::Kvwrite);
        assert_eq!(s.workers, 1);
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!((s.key_size, s.value_size), (32, 1024));
        assert_eq!(s.database, "benchmark");
        assert_eq!(s.progress, Some(Duration::from_secs(5)));
        // Runs shorter than a minute report every second.
        let s = parse(&["-s", "127.0.0.1:9001", "--duration", "10"]).unwrap();
        assert_eq!(s.progress, Some(Duration::from_secs(1)));
        assert_eq!(s.setup_timeout, Duration::from_secs(30));
        assert!(!s.json);
    }

    #[test]
    fn every_flag_is_read() {
        let s = parse(&[
            "-s",
            "127.0.0.1:1, 127.0.0.1:2",
            "--workload",
            "kvreadwrite",
            "--workers",
            "8",
            "--duration",
            "2.5",
            "--key-size",
            "16",
            "--value-size",
            "0",
            "--database",
            "db",
            "--progress",
            "0",
            "--json",
        ])
        .unwrap();
        assert_eq!(s.servers, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(s.workload, Workload::Kvreadwrite);
        assert_eq!(s.workers, 8);
        assert_eq!(s.duration, Duration::from_millis(2500));
        assert_eq!((s.key_size, s.value_size), (16, 0));
        assert_eq!(s.database, "db");
        assert_eq!(s.progress, None);
        assert!(s.json);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "--servers"),
            (&["-s", ","], "at least one server"),
            (&["-s", "a:1", "--workers", "0"], "--workers"),
            (&["-s", "a:1", "--workers", "100000"], "--workers"),
            (&["-s", "a:1", "--duration", "0"], "--duration"),
            (&["-s", "a:1", "--duration=-1"], "--duration"),
            (&["-s", "a:1", "--duration", "NaN"], "--duration"),
            (&["-s", "a:1", "--duration", "inf"], "--duration"),
            (&["-s", "a:1", "--key-size", "0"], "--key-size"),
            (&["-s", "a:1", "--value-size", "999999999"], "--value-size"),
            (&["-s", "a:1", "--workload", "kvreads"], "kvreads"),
            (&["-s", "a:1", "--read-mode", "nearby"], "stale:MS"),
            (&["-s", "a:1", "--keys", "0"], "--keys"),
            (&["-s", "a:1", "--database", ""], "--database"),
            (&["-s", "a:1", "--progress=-1"], "--progress"),
            (&["-s", "a:1", "--setup-timeout", "0"], "--setup-timeout"),
        ];
        for (argv, needle) in cases {
            let err = parse(argv).expect_err(&format!("{argv:?} accepted"));
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
    }

    #[test]
    fn keys_are_random_letters_of_the_given_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for size in [1, 32, 100] {
            let key = new_key(&mut rng, size);
            assert_eq!(key.len(), size);
            assert!(key.bytes().all(|b| b.is_ascii_alphabetic()), "{key}");
        }
        let a = new_key(&mut rng, 32);
        let b = new_key(&mut rng, 32);
        assert_ne!(a, b);
    }

    #[test]
    fn values_are_half_repeated_half_random() {
        let mut rng = StdRng::seed_from_u64(2);
        for size in [0, 1, 2, 7, 1024] {
            let value = new_value(&mut rng, size);
            assert_eq!(value.len(), size, "size {size}");
            assert!(value.bytes().all(|b| b.is_ascii_alphabetic()));
            let repeated = size - size / 2;
            if repeated > 0 {
                let first = value.as_bytes()[0];
                assert!(value.as_bytes()[..repeated].iter().all(|&b| b == first));
            }
        }
        // The random half is not one letter repeated.
        let value = new_value(&mut rng, 1024);
        let tail = &value.as_bytes()[512..];
        assert!(tail.iter().any(|&b| b != tail[0]));
    }

    #[test]
    fn kvwrite_only_writes_and_kvreadwrite_mixes() {
        let mut rng = StdRng::seed_from_u64(3);
        let written = vec!["k1".to_owned(), "k2".to_owned()];
        for _ in 0..100 {
            match next_op(Workload::Kvwrite, &mut rng, &written, 8, 16) {
                Op::Write { key, value } => assert_eq!((key.len(), value.len()), (8, 16)),
                op => panic!("kvwrite chose {op:?}"),
            }
            // Nothing written yet: kvreadwrite must write.
            assert!(matches!(
                next_op(Workload::Kvreadwrite, &mut rng, &[], 8, 16),
                Op::Write { .. }
            ));
        }
        let mut reads = 0;
        for _ in 0..1000 {
            if let Op::Read { key } = next_op(Workload::Kvreadwrite, &mut rng, &written, 8, 16) {
                assert!(written.contains(&key));
                reads += 1;
            }
        }
        assert!((350..650).contains(&reads), "{reads} reads of 1000");
        for _ in 0..100 {
            match next_op(Workload::Kvread, &mut rng, &written, 8, 16) {
                Op::Read { key } => assert!(written.contains(&key)),
                op => panic!("kvread chose {op:?}"),
            }
        }
    }

    #[test]
    fn follower_reads_spread_over_the_listed_nodes() {
        let s = parse(&["-s", "a:1,b:2,c:3", "--read-mode", "follower"]).unwrap();
        assert_eq!(s.read_mode, ReadMode::Follower);
        let read = Op::Read { key: "k".into() };
        let write = Op::Write {
            key: "k".into(),
            value: "v".into(),
        };
        assert_eq!(Target::of(&s, 4, &read), Target::Reads { worker: 4 });
        assert_eq!(Target::of(&s, 4, &write), Target::Leader);
        let s = parse(&["-s", "a:1,b:2", "--read-mode", "leader"]).unwrap();
        assert_eq!(Target::of(&s, 1, &read), Target::Leader);
        let s = parse(&["-s", "a:1", "--read-mode", "stale:250"]).unwrap();
        assert_eq!(s.read_mode, ReadMode::Stale(Duration::from_millis(250)));
        assert!(parse(&["-s", "a:1", "--read-mode", "sometimes"]).is_err());
        assert!(parse(&["-s", "a:1", "--keys", "0"]).is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 0.0), 7);
        assert_eq!(percentile(&[7], 99.0), 7);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 99.0), 10);
        assert_eq!(percentile(&v, 50.0), 5);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
    }

    #[test]
    fn latency_summary_sorts_its_samples() {
        let l = Latency::of(vec![5_000_000, 1_000_000, 3_000_000, 2_000_000, 4_000_000]);
        assert_eq!(
            l,
            Latency {
                count: 5,
                p50: 3_000_000,
                p90: 5_000_000,
                p99: 5_000_000,
                max: 5_000_000
            }
        );
        assert_eq!(Latency::of(Vec::new()), Latency::default());
        assert_eq!(ms(1_234_567), 1.235);
        assert_eq!(per_second(30, Duration::from_secs(4)), 7.5);
        assert_eq!(per_second(30, Duration::ZERO), 0.0);
    }

    #[test]
    fn busy_pauses_grow_and_stay_bounded() {
        assert_eq!(busy_pause(0, 1.0), Duration::from_millis(1));
        assert_eq!(busy_pause(3, 1.0), Duration::from_millis(8));
        assert_eq!(busy_pause(5, 1.0), BUSY_PAUSE_MAX);
        assert_eq!(busy_pause(1000, 1.0), BUSY_PAUSE_MAX);
        assert_eq!(busy_pause(0, 0.5), Duration::from_micros(500));
        assert_eq!(busy_pause(0, 0.0), Duration::from_micros(500));
    }

    #[test]
    fn merged_report_adds_workers_up() {
        let a = WorkerReport {
            writes: vec![1_000_000, 3_000_000],
            reads: vec![2_000_000],
            busy_retries: 2,
            reconnects: 1,
            errors: 0,
            unfinished: 1,
            first_error: None,
            unknown_outcomes: 0,
            first_unknown: None,
        };
        let b = WorkerReport {
            writes: vec![4_000_000],
            errors: 1,
            first_error: Some("boom".into()),
            unknown_outcomes: 2,
            first_unknown: Some("the write may or may not have been applied: x".into()),
            ..WorkerReport::default()
        };
        let report = Report::merge(vec![a, b], Duration::from_secs(2));
        assert_eq!(report.unknown_outcomes, 2);
        assert!(report
            .to_text(&parse(&["-s", "a:1"]).unwrap())
            .contains("writes with an unknown outcome: 2 (each may or may not have been applied)"));
        assert_eq!(report.ops(), 4);
        assert_eq!(report.writes.count, 3);
        assert_eq!(report.reads.count, 1);
        assert_eq!(report.all.max, 4_000_000);
        assert_eq!(
            (
                report.busy_retries,
                report.reconnects,
                report.errors,
                report.unfinished
            ),
            (2, 1, 1, 1)
        );
        let s = parse(&["-s", "127.0.0.1:9001", "--duration", "2"]).unwrap();
        let json = report.to_json(&s);
        assert_eq!(json["ops"], 4);
        assert_eq!(json["ops_per_sec"], 2.0);
        assert_eq!(json["writes"]["count"], 3);
        assert_eq!(json["latency_ms"]["max"], 4.0);
        assert_eq!(json["first_error"], "boom");
        assert_eq!(json["workload"], "kvwrite");
        // One line.
        assert!(!json.to_string().contains('\n'));
        let text = report.to_text(&s);
        assert!(text.contains("2.0 ops/s"), "{text}");
        assert!(text.contains("first error: boom"), "{text}");
    }

    /// Nobody listening: the run fails once the setup timeout is over,
    /// naming the servers, instead of hanging.
    #[tokio::test]
    async fn an_unreachable_cluster_fails_within_the_setup_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let s = parse(&["-s", &address, "--setup-timeout", "0.5", "--duration", "1"]).unwrap();
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(30), execute(&s))
            .await
            .expect("setup is bounded")
            .expect_err("nobody listens");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(format!("{err:#}").contains(&address), "{err:#}");
    }

    /// The whole run against an in-process dqlite-rs server: the counts
    /// add up and every write is in the table. Nothing about speed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_run_against_a_dqlite_rs_server() {
        use dqlite_server::{Server, ServerConfig};

        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(ServerConfig::new(1, "127.0.0.1:0", dir.path()))
            .await
            .unwrap();
        let address = server.address().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));

        let s = parse(&[
            "-s",
            &address,
            "--workload",
            "kvreadwrite",
            "--workers",
            "3",
            "--duration",
            "0.5",
            "--key-size",
            "12",
            "--value-size",
            "100",
            "--progress",
            "0.2",
        ])
        .unwrap();
        let report = tokio::time::timeout(Duration::from_secs(60), execute(&s))
            .await
            .expect("the run is bounded")
            .unwrap();
        assert_eq!(report.errors, 0, "{:?}", report.first_error);
        assert!(report.writes.count > 0);
        assert_eq!(report.ops(), report.writes.count + report.reads.count);

        let mut db = Database::connect_with(
            &[address.as_str()],
            "benchmark",
            &client_config(&Config::default(), Duration::from_secs(10)),
        )
        .await
        .unwrap();
        let rows = db
            .query(
                "SELECT count(*), min(length(key)), max(length(value)) FROM model",
                (),
            )
            .await
            .unwrap()
            .all()
            .await
            .unwrap();
        let count: i64 = rows[0].get(0).unwrap();
        assert_eq!(count as u64, report.writes.count);
        assert_eq!(rows[0].get::<i64>(1).unwrap(), 12);
        assert_eq!(rows[0].get::<i64>(2).unwrap(), 100);

        // kvread with follower reads (on the one node, which leads): every
        // read finds one of the keys written first.
        let s = parse(&[
            "-s",
            &address,
            "--workload",
            "kvread",
            "--read-mode",
            "follower",
            "--keys",
            "150",
            "--workers",
            "2",
            "--duration",
            "0.5",
            "--database",
            "reads",
            "--progress",
            "0",
        ])
        .unwrap();
        let report = tokio::time::timeout(Duration::from_secs(60), execute(&s))
            .await
            .expect("the run is bounded")
            .unwrap();
        assert_eq!(report.errors, 0, "{:?}", report.first_error);
        assert_eq!(report.writes.count, 0);
        assert!(report.reads.count > 0);
        drop(stop);
    }
}
