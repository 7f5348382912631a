//! The service's configuration, read once from the environment (or flags) by clap.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use clap::Parser;
use sqlx::postgres::PgConnectOptions;

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
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: DatabaseUrl,

    /// Address and port the HTTP API listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,
}

/// A parsed PostgreSQL URL whose `Debug` output leaves the password out, so that logging the
/// configuration never leaks it.
#[derive(Clone)]
pub struct DatabaseUrl(PgConnectOptions);

impl DatabaseUrl {
    /// The connection options, password included; hand them to sqlx only.
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.0
    }
}

impl From<PgConnectOptions> for DatabaseUrl {
    fn from(options: PgConnectOptions) -> Self {
        Self(options)
    }
}

/// Why a `DATABASE_URL` was refused. The message never repeats the URL, which may hold a password.
#[derive(Debug, thiserror::Error)]
#[error("not a valid PostgreSQL URL (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE): {0}")]
pub struct InvalidDatabaseUrl(String);

impl FromStr for DatabaseUrl {
    type Err = InvalidDatabaseUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(InvalidDatabaseUrl(
                "the scheme must be postgres:// or postgresql://".to_owned(),
            ));
        }
        // sqlx's parse errors describe the fault without echoing the URL itself.
        PgConnectOptions::from_str(url)
            .map(Self)
            .map_err(|err| InvalidDatabaseUrl(err.to_string()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("host", &self.0.get_host())
            .field("port", &self.0.get_port())
            .field("username", &self.0.get_username())
            .field("database", &self.0.get_database())
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let url: DatabaseUrl = "postgres://inventory:s3cr3t-pw@db.local:5433/movies_db"
            .parse()
            .expect("valid url");
        let shown = format!("{url:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(
            shown.contains("movies_db") && shown.contains("5433"),
            "{shown}"
        );
    }

    #[test]
    fn refuses_other_schemes_without_echoing_the_url() {
        let err = "mysql://u:s3cr3t-pw@h/db"
            .parse::<DatabaseUrl>()
            .expect_err("wrong scheme");
        assert!(!err.to_string().contains("s3cr3t-pw"));
    }

    #[test]
    fn listen_addr_defaults_to_port_8080_on_all_interfaces() {
        let config = Config::try_parse_from(["inventory", "--database-url", "postgres://u@h/db"])
            .expect("parses");
        assert_eq!(config.listen_addr.to_string(), "0.0.0.0:8080");
    }
}
