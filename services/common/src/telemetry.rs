//! Tracing set-up for the service binaries. Libraries never install a subscriber; only `main` calls
//! this.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs a subscriber that writes one line per event to stdout (journald picks it up under
/// systemd). The level comes from `RUST_LOG`, `info` when unset. Calling it twice is harmless.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
