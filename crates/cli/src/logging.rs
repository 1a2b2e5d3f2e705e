//! Where logs go and how they look: stderr, human-readable text or one JSON
//! object per line.
//!
//! The level comes from `--log-level` when given, else from `RUST_LOG`,
//! else `info`: a flag typed for this run is more specific than an
//! environment variable that may be set for the whole session. Both take
//! tracing's filter syntax (`debug`, `info,dqlite_consensus=debug`).

use anyhow::Context;
use tracing_subscriber::EnvFilter;

/// The format of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`,
    /// `target`), for log collectors.
    Json,
}

/// The filter for a run: `level` (from `--log-level`) first, then
/// `RUST_LOG`, then `info`.
fn filter(level: Option<&str>) -> anyhow::Result<EnvFilter> {
    if let Some(level) = level {
        return EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"));
    }
    Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
}

/// Installs the global subscriber. Called once, before any subcommand runs.
pub fn init(level: Option<&str>, format: LogFormat) -> anyhow::Result<()> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_and_bad_levels_are_errors() {
        assert_eq!(filter(Some("debug")).unwrap().to_string(), "debug");
        assert_eq!(
            filter(Some("info,dqlite_consensus=trace"))
                .unwrap()
                .to_string(),
            "dqlite_consensus=trace,info"
        );
        assert!(filter(Some("loud=[")).is_err());
    }
}
