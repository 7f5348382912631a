//! `DATABASE_URL`, parsed once and never shown with its password: the one type inventory and
//! billing read it into (with the `postgres` feature); and which errors of that database mean it
//! cannot be reached for now.

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

/// Whether a database error means "cannot reach the database for now" (try again later: a 503,
/// a retry) rather than a fault in a query:
/// - the network, TLS, the pool;
/// - a connection closed before it answered the request for TLS: what HAProxy does while no
///   Patroni member is the primary (it accepts, then closes), which sqlx reads as the byte 0x00
///   instead of `S`;
/// - the server's own word that it cannot serve now: a connection exception (class 08), a
///   shutdown or a start under way (class 57P), or a write sent to a server that is no longer, or
///   not yet, the primary (25006, while a Patroni cluster changes its primary).
pub fn is_unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => true,
        sqlx::Error::Protocol(message) => {
            message.starts_with("unexpected response from SSLRequest: 0x00")
        }
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "25006"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgSslMode;
    use sqlx::Connection;

    /// HAProxy with no primary to send a connection to: it accepts, then closes. Asking for TLS
    /// there is "unreachable", as a refused connection is; a server that answers is not.
    #[tokio::test]
    async fn a_connection_closed_before_tls_or_refused_is_unreachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let closing = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            drop(socket);
            listener
        });
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("u")
            .ssl_mode(PgSslMode::Require);
        let closed = sqlx::PgConnection::connect_with(&options)
            .await
            .expect_err("closed before answering");
        assert!(is_unreachable(&closed), "{closed:?}");
        drop(closing.await.expect("accepted"));
        let refused = sqlx::PgConnection::connect_with(&options)
            .await
            .expect_err("nothing listens");
        assert!(is_unreachable(&refused), "{refused:?}");
        assert!(!is_unreachable(&sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x45".into()
        )));
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
    }

    /// A real server's answers: a write where writing is not allowed now (what a replica says,
    /// 25006) and its connection ended by the server (57P01) are "unreachable"; a query's own
    /// fault is not.
    #[tokio::test]
    async fn the_servers_cannot_serve_now_is_unreachable_and_a_bad_query_is_not() {
        let url: DatabaseUrl = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL (a PostgreSQL the tests may use)")
            .parse()
            .expect("valid DATABASE_URL");
        let mut connection = sqlx::PgConnection::connect_with(url.connect_options())
            .await
            .expect("connects");
        let mut transaction = connection.begin().await.expect("begins");
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *transaction)
            .await
            .expect("read only");
        let read_only = sqlx::query("CREATE TEMPORARY TABLE unreachable_probe (id int)")
            .execute(&mut *transaction)
            .await
            .expect_err("read-only transaction");
        assert!(is_unreachable(&read_only), "{read_only:?}");
        drop(transaction);
        let bad_query = sqlx::query("SELECT no_such_column FROM pg_class")
            .execute(&mut connection)
            .await
            .expect_err("no such column");
        assert!(!is_unreachable(&bad_query), "{bad_query:?}");
        let terminated = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
            .execute(&mut connection)
            .await
            .expect_err("terminated");
        assert!(is_unreachable(&terminated), "{terminated:?}");
    }

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
