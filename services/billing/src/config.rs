//! The worker's configuration, read once from the environment (or flags) so `--help` documents it.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::Parser;
use service_common::{redact_url_password, AmqpUrl, DEFAULT_BILLING_QUEUE};

use crate::consumer::ConsumerSettings;

/// Everything the billing worker needs to run. Every field has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "billing",
    version,
    about = "Consumes billing orders from RabbitMQ into PostgreSQL."
)]
pub struct Config {
    /// PostgreSQL database that owns the `orders` table.
    // `hide_env_values` keeps the password out of `--help`, which otherwise echoes the value.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretUrl,

    /// RabbitMQ broker the orders arrive through (amqp://user:password@host:port/vhost).
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: AmqpUrl,

    /// Durable queue consumed; poison messages go to `<queue>.dead-letter`.
    #[arg(long, env = "BILLING_QUEUE", default_value = DEFAULT_BILLING_QUEUE,
          value_parser = service_common::queue_name)]
    pub billing_queue: String,

    /// Address of the small HTTP listener serving /health and /ready.
    #[arg(long, env = "HEALTH_LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    pub health_listen_addr: SocketAddr,

    /// How many unacknowledged deliveries the broker may push ahead of the worker.
    #[arg(long, env = "BILLING_PREFETCH", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Most messages committed in one database transaction (capped at the prefetch).
    #[arg(long, env = "BILLING_BATCH_SIZE", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,

    /// How long, in milliseconds, a batch waits for more messages before it is committed.
    #[arg(long, env = "BILLING_BATCH_TIMEOUT_MS", default_value_t = 50)]
    pub batch_timeout_ms: u64,

    /// Largest pause, in milliseconds, between retries while PostgreSQL or RabbitMQ is down,
    /// before jitter (which may double it): a dependency that is back is found that soon.
    #[arg(long, env = "BILLING_MAX_BACKOFF_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backoff_ms: u64,

    /// How long health-check clients may take, and how many connections may be open.
    #[command(flatten)]
    pub server: http_serve::ServerArgs,
}

impl Config {
    /// The consumer's tuning, derived from the raw values above.
    pub fn consumer_settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            queue: self.billing_queue.clone(),
            prefetch: self.prefetch,
            // A batch larger than the prefetch could never fill and would always wait the timeout.
            batch_size: usize::from(self.batch_size.min(self.prefetch)),
            batch_timeout: Duration::from_millis(self.batch_timeout_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
        }
    }
}

/// The database URL, which may carry a password: `Debug` and `Display` show it with the password
/// replaced by `***`; only [`SecretUrl::expose`] gives the real text, to hand to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The full URL, password included. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password masked, safe for logs.
    pub fn redacted(&self) -> String {
        redact_url_password(&self.0)
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_debug_or_display() {
        let url = SecretUrl::new("amqp://guest:s3cr%40t@127.0.0.1:5672/%2f");
        assert_eq!(url.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cr"));
        assert_eq!(url.expose(), "amqp://guest:s3cr%40t@127.0.0.1:5672/%2f");
    }

    #[test]
    fn urls_without_password_are_shown_as_is() {
        for raw in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://127.0.0.1/db?user=a",
            "not a url",
        ] {
            assert_eq!(SecretUrl::new(raw).to_string(), raw);
        }
    }

    #[test]
    fn the_broker_connected_to_is_the_ip_address_of_amqp_url() {
        let config = Config::parse_from([
            "billing",
            "--database-url",
            "postgres://x",
            "--amqp-url",
            "amqp://billing:pw@10.1.2.3:5673/billing_vhost",
        ]);
        // What `consumer` hands to `Connection::connect_uri`.
        let uri = config.amqp_url.to_amqp_uri();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "billing_vhost");
        assert_eq!(uri.authority.userinfo.username, "billing");
        assert_eq!(uri.authority.userinfo.password, "pw");
        assert!(!format!("{config:?}").contains("pw@"));

        // lapin's parser alone turns an IPv6 address into "localhost".
        let config = Config::parse_from([
            "billing",
            "--database-url",
            "postgres://x",
            "--amqp-url",
            "amqp://billing:pw@[fd00::13]:5673/billing_vhost",
        ]);
        assert_eq!(config.amqp_url.to_amqp_uri().authority.host, "[fd00::13]");
    }

    #[test]
    fn batch_never_exceeds_prefetch() {
        let config = Config::parse_from([
            "billing",
            "--database-url",
            "postgres://x",
            "--amqp-url",
            "amqp://x",
            "--prefetch",
            "10",
            "--batch-size",
            "50",
        ]);
        assert_eq!(config.consumer_settings().batch_size, 10);
        assert_eq!(config.billing_queue, "billing_queue");
    }

    #[test]
    fn empty_or_reserved_queue_names_are_refused() {
        for bad in ["", "  ", "amq.gen-x"] {
            let parsed = Config::try_parse_from([
                "billing",
                "--database-url",
                "postgres://x",
                "--amqp-url",
                "amqp://x",
                "--billing-queue",
                bad,
            ]);
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
    }
}
