//! Tracing set-up for the service binaries. Libraries never install a subscriber; only `main` calls
//! this.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs a subscriber that writes one line per event to stdout (journald picks it up under
/// systemd). The level comes from `RUST_LOG`, `info` when unset. `LOG_FORMAT=json` makes each line
/// one JSON object, the event's fields beside those of its request's span (request id, method,
/// path, route; the response's status and latency), for journald forwarding; `text`, the default,
/// is for people. Another value is an error naming it. Calling it twice is harmless.
pub fn init_tracing() -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("LOG_FORMAT").unwrap_or_default();
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false);
    let _ = match format.as_str() {
        "" | "text" => builder.try_init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        other => {
            return Err(format!(
                "LOG_FORMAT must be `text` or `json`, not `{other}`"
            ))
        }
    };
    Ok(())
}
