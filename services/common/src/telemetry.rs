//! Tracing set-up for the service binaries. Libraries never install a subscriber; only `main` calls
//! this.

use std::fmt::Debug;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
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
        "" | "text" => builder.finish().with(QuietNotFound).try_init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(QuietNotFound)
            .try_init(),
        other => {
            return Err(format!(
                "LOG_FORMAT must be `text` or `json`, not `{other}`"
            ))
        }
    };
    Ok(())
}

/// Drops lapin's ERROR "Channel closed" event when the broker closed the channel with 404
/// NOT_FOUND. The services ask whether a queue exists by declaring it passively on a channel of its
/// own (the quorum migration's staging queue, at every start), and the broker answers "no" by
/// closing that channel: without this, each start logged that expected answer as an ERROR. Nothing
/// is lost: lapin hands the same error to the call that caused it, and a 404 the services did not
/// expect (a queue deleted under a consumer) is logged by them where they see it. Every other
/// channel close stays an ERROR.
struct QuietNotFound;

impl<S: Subscriber> Layer<S> for QuietNotFound {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if metadata.target() != "lapin::channel" || *metadata.level() != Level::ERROR {
            return true;
        }
        let mut not_found = NotFound(false);
        event.record(&mut not_found);
        !not_found.0
    }
}

/// Whether an event's `error` field is AMQP's soft error NOT_FOUND.
struct NotFound(bool);

impl Visit for NotFound {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "error" {
            self.0 |= format!("{value:?}").contains("Soft(NOTFOUND)");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Where a test subscriber writes, to be read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Shaped as lapin's error kinds, which the filter reads through their Debug text.
    #[derive(Debug)]
    #[allow(dead_code, clippy::upper_case_acronyms)]
    enum Kind {
        Soft(SoftError),
    }

    #[derive(Debug)]
    #[allow(clippy::upper_case_acronyms)]
    enum SoftError {
        NOTFOUND,
        ACCESSREFUSED,
    }

    #[test]
    fn only_lapins_not_found_channel_closes_are_dropped() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
            .with(QuietNotFound);
        tracing::subscriber::with_default(subscriber, || {
            let not_found = Kind::Soft(SoftError::NOTFOUND);
            let refused = Kind::Soft(SoftError::ACCESSREFUSED);
            tracing::error!(target: "lapin::channel", channel = 3, error = ?not_found, "Channel closed");
            tracing::error!(target: "lapin::channel", channel = 4, error = ?refused, "Channel closed");
            tracing::error!(target: "lapin::channel", "Invalid state");
            tracing::error!(error = ?not_found, "ours, about a missing queue");
        });
        let text = String::from_utf8(captured.0.lock().expect("not poisoned").clone())
            .expect("the log is UTF-8");
        assert!(!text.contains("channel=3"), "{text}");
        assert!(text.contains("channel=4"), "{text}");
        assert!(text.contains("Invalid state"), "{text}");
        assert!(text.contains("ours, about a missing queue"), "{text}");
    }
}
