//! The worker's configuration, read once from the environment (or flags) so `--help` documents it.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use service_common::{AmqpUrls, DatabaseUrl, DatabaseUrlParser, DEFAULT_BILLING_QUEUE};

use crate::consumer::{
    ConsumerSettings, DEFAULT_BATCHES_IN_FLIGHT, DEFAULT_BATCH_SIZE, DEFAULT_PREFETCH,
};

/// Everything the billing worker needs to run. Every field has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "billing",
    version,
    about = "Consumes billing orders from RabbitMQ into PostgreSQL."
)]
pub struct Config {
    /// PostgreSQL database that owns the `orders` table, e.g.
    /// postgres://billing:PASSWORD@127.0.0.1:5432/billing_db. Give it through the environment: it
    /// holds a password, which must not appear on a command line (nor in `--help` or an error).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrlParser)]
    pub database_url: DatabaseUrl,

    /// RabbitMQ broker the orders arrive through (amqp://user:password@host:port/vhost), or the
    /// URLs of a cluster's nodes, comma-separated: billing consumes through one and moves to the
    /// next when it goes away.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: AmqpUrls,

    /// The CA certificate(s) (PEM) the broker's certificate must be signed by, for `amqps://`
    /// URLs: this file alone is trusted, and the certificate must name the URL's host. The
    /// provisioner writes the platform CA at /etc/platform-tls/ca.crt.
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<std::path::PathBuf>,

    /// Durable queue consumed; poison messages go to `<queue>.dead-letter`.
    #[arg(long, env = "BILLING_QUEUE", default_value = DEFAULT_BILLING_QUEUE,
          value_parser = service_common::queue_name)]
    pub billing_queue: String,

    /// Address of the small HTTP listener serving /health and /ready.
    #[arg(long, env = "HEALTH_LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    pub health_listen_addr: SocketAddr,

    /// How many unacknowledged deliveries the broker may push ahead of the worker. The batch size
    /// times (BILLING_BATCHES_IN_FLIGHT + 1) lets the next batch fill while the others commit.
    #[arg(long, env = "BILLING_PREFETCH", default_value_t = DEFAULT_PREFETCH,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Most messages committed in one database transaction (capped at the prefetch).
    #[arg(long, env = "BILLING_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,

    /// Most batches committed at once, each in a transaction of its own (the database pool has
    /// 5 connections). Acks still go in delivery order. Measured by scripts/bench on two cores,
    /// with 1000-message batches: one batch at a time drained 0.43x and 0.54x of the raw
    /// consumer in two runs, two at a time 0.59x in a run between them.
    #[arg(long, env = "BILLING_BATCHES_IN_FLIGHT", default_value_t = DEFAULT_BATCHES_IN_FLIGHT,
          value_parser = clap::value_parser!(u8).range(1..=4))]
    pub batches_in_flight: u8,

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
    /// The broker's nodes, with the CA their `amqps://` URLs are verified against.
    pub fn broker(&self) -> Result<AmqpUrls, service_common::AmqpUrlError> {
        self.amqp_url
            .clone()
            .with_ca_file(self.amqp_ca_file.as_deref())
    }
    /// The consumer's tuning, derived from the raw values above.
    pub fn consumer_settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            queue: self.billing_queue.clone(),
            prefetch: self.prefetch,
            // A batch larger than the prefetch could never fill and would always wait the timeout.
            batch_size: usize::from(self.batch_size.min(self.prefetch)),
            batches_in_flight: usize::from(self.batches_in_flight),
            batch_timeout: Duration::from_millis(self.batch_timeout_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_database_url_is_refused_without_echoing_it() {
        let err = Config::try_parse_from([
            "billing",
            "--database-url",
            "mysql://u:s3cr3t-pw@h/db",
            "--amqp-url",
            "amqp://x",
        ])
        .expect_err("wrong scheme");
        let shown = err.to_string();
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("DATABASE_URL"), "{shown}");
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
        let uri = config.amqp_url.node(0).to_amqp_uri();
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
        assert_eq!(
            config.amqp_url.node(0).to_amqp_uri().authority.host,
            "[fd00::13]"
        );
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
