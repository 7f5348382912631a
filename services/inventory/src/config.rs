//! The service's configuration, read once from the environment (or flags) by clap.

use std::net::SocketAddr;

use clap::Parser;
pub use service_common::{DatabaseUrl, DatabaseUrlParser};

/// Everything the inventory service needs to start. Every field can come from the environment,
/// which is how systemd and `.env` provide it; `--help` lists the variables.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "inventory",
    version,
    about = "REST CRUD service for the movie catalogue"
)]
pub struct Config {
    /// PostgreSQL URL of the movies database, e.g. postgres://inventory:PASSWORD@127.0.0.1:5432/movies_db.
    /// Give it through the environment: it holds a password, which must not appear on a command line.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrlParser)]
    pub database_url: DatabaseUrl,

    /// Address and port the HTTP API listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// How long clients may take, and how many connections may be open.
    #[command(flatten)]
    pub server: http_serve::ServerArgs,

    /// HTTPS for the API, when it is called from other machines.
    #[command(flatten)]
    pub tls: http_serve::TlsArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_does_not_quote_an_invalid_url() {
        let err =
            Config::try_parse_from(["inventory", "--database-url", "mysql://u:s3cr3t-pw@h/db"])
                .expect_err("wrong scheme");
        let shown = err.to_string();
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("DATABASE_URL"), "{shown}");
    }

    #[test]
    fn listen_addr_defaults_to_port_8080_on_all_interfaces() {
        let config = Config::try_parse_from(["inventory", "--database-url", "postgres://u@h/db"])
            .expect("parses");
        assert_eq!(config.listen_addr.to_string(), "0.0.0.0:8080");
    }
}
