//! Logging for a library inside someone else's process: off unless the
//! application's environment asks for it with `LIBDQLITE_TRACE`.

use std::sync::Once;

/// Installs a stderr subscriber once if `LIBDQLITE_TRACE` is set and the
/// process has none yet.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("LIBDQLITE_TRACE").is_none() {
            return;
        }
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    });
}
