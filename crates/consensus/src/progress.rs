//! Progress lines for long operations (sending, receiving and installing
//! snapshots, replaying the log at start-up): a start line with the size,
//! a line at most every [`PROGRESS_EVERY`] while it runs, and an end line
//! with the time taken, so an operator can tell a slow transfer from a
//! stuck one.

use std::io::Read;
use std::time::{Duration, Instant};

use tracing::info;

/// Least time between two progress lines of one operation.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// One long operation measured in `unit`s (bytes or entries).
#[derive(Debug)]
pub struct Progress {
    what: String,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// Logs the start of `what`, `total` units long if known.
    pub fn start(what: impl Into<String>, unit: &'static str, total: Option<u64>) -> Progress {
        let what = what.into();
        match total {
            Some(total) => info!("{what}: {total} {unit}"),
            None => info!("{what}: started"),
        }
        let now = Instant::now();
        Progress {
            what,
            unit,
            total,
            done: 0,
            started: now,
            last_line: now,
        }
    }

    /// Counts `n` more units done; logs a line if one is due.
    pub fn add(&mut self, n: u64) {
        self.set(self.done.saturating_add(n));
    }

    /// Sets the units done so far; logs a line if one is due.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        if self.last_line.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_line = Instant::now();
        let (what, unit, done) = (&self.what, self.unit, self.done);
        match self.total.filter(|t| *t > 0) {
            Some(total) => info!(
                "{what}: {done} of {total} {unit} ({:.0}%)",
                done as f64 * 100.0 / total as f64
            ),
            None => info!("{what}: {done} {unit} so far"),
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The total, or 0 when unknown.
    pub fn total_or_zero(&self) -> u64 {
        self.total.unwrap_or(0)
    }

    /// Logs the end of the operation.
    pub fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64();
        info!(
            "{}: done, {} {} in {secs:.1} s",
            self.what, self.done, self.unit
        );
    }
}

/// A reader that reports the bytes read through a [`Progress`].
pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> ProgressReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, progress: Progress) -> Self {
        ProgressReader { inner, progress }
    }

    /// Logs the end of the operation.
    pub fn finish(self) {
        self.progress.finish();
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_counts_what_passes_through() {
        let data = vec![7u8; 10_000];
        let mut reader = ProgressReader::new(
            &data[..],
            Progress::start("test read", "bytes", Some(10_000)),
        );
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(reader.progress.done(), 10_000);
        reader.finish();
    }
}
