//! The gateway's configuration: read once from the environment (or flags) by clap, so that
//! `gateway --help` documents every variable, then validated into typed values.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use http::uri::{Authority, Scheme};
use http::Uri;
use service_common::AmqpUrls;

/// Everything the gateway needs to start. Every field has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Base URL(s) of the inventory service, comma-separated (e.g.
    /// `http://10.0.0.11:8080,http://10.0.0.12:8080`); requests are spread round-robin.
    #[arg(
        long,
        env = "INVENTORY_URL",
        value_delimiter = ',',
        required = true,
        num_args = 1..
    )]
    pub inventory_url: Vec<InventoryUrl>,

    /// The CA (PEM) an `https://` inventory's certificate must be signed by: this file alone is
    /// trusted, and the certificate must name the URL's host. The provisioner writes the
    /// platform CA at /etc/platform-tls/ca.crt.
    #[arg(long, env = "INVENTORY_CA_FILE")]
    pub inventory_ca_file: Option<std::path::PathBuf>,

    /// The certificate (PEM) the gateway presents to an `https://` inventory that asks for one,
    /// with INVENTORY_CLIENT_KEY_FILE.
    #[arg(long, env = "INVENTORY_CLIENT_CERT_FILE", requires_all = ["inventory_client_key_file", "inventory_ca_file"])]
    pub inventory_client_cert_file: Option<std::path::PathBuf>,

    /// The private key (PEM) of INVENTORY_CLIENT_CERT_FILE.
    #[arg(
        long,
        env = "INVENTORY_CLIENT_KEY_FILE",
        requires = "inventory_client_cert_file"
    )]
    pub inventory_client_key_file: Option<std::path::PathBuf>,

    /// RabbitMQ URL, e.g. `amqp://user:password@127.0.0.1:5672/%2f`, or the URLs of a cluster's
    /// nodes, comma-separated: the gateway publishes through one and moves to the next when it
    /// goes away. Set it in the environment, not on the command line: it carries a password. Its
    /// value is never shown.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: AmqpUrls,

    /// The CA certificate(s) (PEM) the broker's certificate must be signed by, for `amqps://`
    /// URLs: this file alone is trusted, and the certificate must name the URL's host. The
    /// provisioner writes the platform CA at /etc/platform-tls/ca.crt.
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<std::path::PathBuf>,

    /// Durable queue billing orders are published to (through the default exchange).
    #[arg(long, env = "BILLING_QUEUE", default_value = service_common::DEFAULT_BILLING_QUEUE,
          value_parser = service_common::queue_name)]
    pub billing_queue: String,

    /// Largest accepted request body, in bytes; larger bodies get a JSON 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long to wait for a TCP connection to an inventory instance, in milliseconds.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_MS", default_value_t = 2_000)]
    pub upstream_connect_timeout_ms: u64,

    /// How long an inventory request may take until its response headers arrive (and, after
    /// that, the longest pause between two chunks of its body), in milliseconds.
    #[arg(long, env = "UPSTREAM_TIMEOUT_MS", default_value_t = 10_000)]
    pub upstream_timeout_ms: u64,

    /// How long an inventory instance that refused a connection is left out of the rotation, in
    /// milliseconds.
    #[arg(long, env = "UPSTREAM_COOLDOWN_MS", default_value_t = 3_000)]
    pub upstream_cooldown_ms: u64,

    /// How long a billing order may wait for the broker's publisher confirm, in milliseconds.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,

    /// How many confirm-mode channels orders are published on, in turn, over the one broker
    /// connection. RabbitMQ runs each channel in a process of its own, so several can use more of
    /// its cores when it is the bottleneck; on two cores shared with the gateway (scripts/bench)
    /// 2 and 4 were no faster than 1.
    #[arg(long, env = "PUBLISH_CHANNELS", default_value = "1")]
    pub publish_channels: std::num::NonZeroU16,

    /// Requests per second each client address may send to the API (movies, billing), on
    /// average; beyond, 429 with `Retry-After`. Unset: no limit. Health and readiness are never
    /// limited.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND")]
    pub rate_limit_per_second: Option<NonZeroU32>,

    /// Requests a client address may send at once above that rate (the bucket's size); defaults
    /// to one second's worth. Only with RATE_LIMIT_PER_SECOND.
    #[arg(long, env = "RATE_LIMIT_BURST", requires = "rate_limit_per_second")]
    pub rate_limit_burst: Option<NonZeroU32>,

    /// The HS256 secret that signs the bearer tokens (JWT) the writing methods then require: POST,
    /// PUT and DELETE on movies need the scope `movies:write`, POST /api/billing `orders:write`.
    /// At least 32 bytes. Give it through the environment (the env file), never on a command
    /// line. Unset: no authentication, as in the original API.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true, value_parser = JwtSecretParser,
          conflicts_with = "auth_jwt_public_key_file")]
    pub auth_jwt_secret: Option<JwtSecret>,

    /// The RSA public key (PEM) that verifies the bearer tokens, signed RS256 by whoever holds
    /// the private key (an identity provider), instead of a shared secret: the same scopes are
    /// required. Unset, with AUTH_JWT_SECRET unset too: no authentication.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<std::path::PathBuf>,

    /// Where `GET /metrics` (Prometheus) is served, apart from the public port, e.g.
    /// 127.0.0.1:9180. Unset: nowhere.
    #[arg(long, env = "METRICS_LISTEN_ADDR")]
    pub metrics_listen_addr: Option<SocketAddr>,

    /// Threads serving the public port, each running an event loop of its own over its share of
    /// the connections, as nginx's workers do; 0 means one per core.
    #[arg(long, env = "SERVER_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub server_threads: u16,

    /// How long clients may take, and how many connections may be open.
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

    /// The threads of SERVER_THREADS, one per core when it is 0.
    pub fn server_threads(&self) -> NonZeroUsize {
        NonZeroUsize::new(usize::from(self.server_threads))
            .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }

    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms)
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    pub fn upstream_cooldown(&self) -> Duration {
        Duration::from_millis(self.upstream_cooldown_ms)
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

/// The secret of `AUTH_JWT_SECRET`; never printed.
#[derive(Clone)]
pub struct JwtSecret(String);

impl JwtSecret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

/// At least 32 bytes (HS256's key is as strong as its secret). A parser of its own because clap's
/// message for a refused value quotes the value, and this one is a secret.
#[derive(Debug, Clone, Copy)]
pub struct JwtSecretParser;

impl clap::builder::TypedValueParser for JwtSecretParser {
    type Value = JwtSecret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<JwtSecret, clap::Error> {
        let invalid = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("AUTH_JWT_SECRET {reason}\n"),
            )
            .with_cmd(cmd)
        };
        let secret = value
            .to_str()
            .ok_or_else(|| invalid("is not valid UTF-8".to_owned()))?;
        if secret.len() < 32 {
            return Err(invalid(format!(
                "is {} bytes long; HS256 needs at least 32",
                secret.len()
            )));
        }
        Ok(JwtSecret(secret.to_owned()))
    }
}

/// Why a configuration value was refused; clap prints it next to the variable's name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("not a URL: {0}")]
    NotAUrl(String),
    #[error("only http:// and https:// URLs are supported")]
    NotHttp,
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL must not carry a query string")]
    HasQuery,
}

/// A validated inventory base URL: `http://host:port` with an optional path prefix (kept
/// without its trailing slash) that is put in front of every proxied path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryUrl {
    /// `https://`: the instance's certificate is verified against INVENTORY_CA_FILE.
    pub https: bool,
    /// `host:port` (or `host`), as given.
    pub authority: Authority,
    /// Path prefix without a trailing slash; empty when the URL has none.
    pub path_prefix: String,
}

impl InventoryUrl {
    fn scheme(&self) -> Scheme {
        if self.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

impl fmt::Display for InventoryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme(),
            self.authority,
            self.path_prefix
        )
    }
}

impl FromStr for InventoryUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s
            .trim()
            .parse()
            .map_err(|err: http::uri::InvalidUri| ConfigError::NotAUrl(err.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ConfigError::NotHttp),
        };
        let authority = uri.authority().ok_or(ConfigError::NoHost)?;
        if authority.host().is_empty() {
            return Err(ConfigError::NoHost);
        }
        if uri.query().is_some() {
            return Err(ConfigError::HasQuery);
        }
        Ok(Self {
            https,
            authority: authority.clone(),
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_url_keeps_authority_and_prefix() {
        let url: InventoryUrl = "http://127.0.0.1:8080/".parse().expect("valid");
        assert_eq!(url.authority, "127.0.0.1:8080");
        assert_eq!(url.path_prefix, "");
        assert!(!url.https);

        let url: InventoryUrl = "http://inv.local/v1/".parse().expect("valid");
        assert_eq!(url.path_prefix, "/v1");

        let url: InventoryUrl = "https://10.0.0.11:8080".parse().expect("valid");
        assert!(url.https);
        assert_eq!(url.to_string(), "https://10.0.0.11:8080");
    }

    #[test]
    fn inventory_url_refuses_what_cannot_work() {
        for bad in ["127.0.0.1:8080", "", "http://x/?a=1", "ftp://x"] {
            assert!(bad.parse::<InventoryUrl>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn config_requires_inventory_and_splits_on_commas() {
        let config = Config::try_parse_from([
            "gateway",
            "--inventory-url",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ])
        .expect("parses");
        assert_eq!(config.inventory_url.len(), 2);
        assert_eq!(config.billing_queue, "billing_queue");
        assert_eq!(config.max_body_bytes, 1024 * 1024);
    }
}
