//! `DATABASE_URL`, parsed once and never shown with its password: the one type inventory and
//! billing read it into (with the `postgres` feature).

use std::ffi::OsStr;
use std::fmt;
use std::str::FromStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use sqlx::postgres::PgConnectOptions;

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

/// Parses `DATABASE_URL` for clap without letting clap quote the value in its error message, as it
/// does for ordinary parsers: the value may hold a password.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseUrlParser;

impl TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let invalid = |reason: &dyn fmt::Display| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("DATABASE_URL is {reason}\n"),
            )
            .with_cmd(cmd)
        };
        let url = value.to_str().ok_or_else(|| invalid(&"not valid UTF-8"))?;
        url.parse().map_err(|err: InvalidDatabaseUrl| invalid(&err))
    }
}

/// Shows the URL without its password, for messages such as "cannot connect to …".
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = &self.0;
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        )
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
    fn display_shows_where_without_the_password() {
        let url: DatabaseUrl = "postgres://inventory:s3cr3t-pw@db.local:5433/movies_db"
            .parse()
            .expect("valid url");
        assert_eq!(
            url.to_string(),
            "postgres://inventory@db.local:5433/movies_db"
        );
    }
}
