//! PostgreSQL over TLS, as the provisioner configures a remote database: `sslmode=verify-full`
//! with the platform CA in `sslrootcert`. Here against this machine's own PostgreSQL, whose
//! certificate (Debian's, `ssl = on`) stands in for a host's: the connection is encrypted, and
//! verify-full refuses a certificate from another CA, or for another name than the address.

use std::str::FromStr;

use service_common::DatabaseUrl;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection};

fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL (see README: the tests' database)")
}

/// The URL with a TLS mode and CA file added to its query.
fn with_tls(mode: &str, ca_file: &std::path::Path) -> DatabaseUrl {
    let url = database_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    DatabaseUrl::from_str(&format!(
        "{url}{separator}sslmode={mode}&sslrootcert={}",
        ca_file.display()
    ))
    .expect("a PostgreSQL URL")
}

async fn connect(url: &DatabaseUrl) -> Result<PgConnection, sqlx::Error> {
    url.connect_options().clone().connect().await
}

#[tokio::test]
async fn the_database_is_reached_over_tls_only_with_a_certificate_the_ca_file_vouches_for() {
    // The server's certificate, as its CA (it is self-signed).
    let mut admin = PgConnection::connect(&database_url())
        .await
        .expect("connects");
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .expect("SHOW ssl");
    assert_eq!(
        ssl, "on",
        "the tests' PostgreSQL must have ssl = on (Debian's default)"
    );
    let cert_file: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&mut admin)
        .await
        .expect("SHOW ssl_cert_file");
    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = dir.path().join("server.crt");
    std::fs::copy(&cert_file, &server_ca).expect("the server's certificate is readable");

    // Encrypted: rustls and PostgreSQL agree on a TLS session.
    let mut tls = connect(&with_tls("require", &server_ca))
        .await
        .expect("connects over TLS");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut tls)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "the connection is not encrypted");

    // Another CA: refused during the handshake.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = params.self_signed(&key).expect("a CA");
    let other_ca = dir.path().join("other.crt");
    std::fs::write(&other_ca, other.pem()).expect("write");
    let error = connect(&with_tls("verify-full", &other_ca))
        .await
        .expect_err("another CA is refused")
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");

    // The right CA, but the certificate does not name the address connected to (Debian's names
    // the machine, not 127.0.0.1): verify-full, what the provisioner writes, refuses it.
    let error = connect(&with_tls("verify-full", &server_ca))
        .await
        .expect_err("a certificate for another name is refused")
        .to_string();
    assert!(
        error.contains("not valid for name \"127.0.0.1\""),
        "{error}"
    );
}

/// What HAProxy does while no Patroni member is primary: it takes the connection, reads what
/// comes, and closes it.
/// With `sslmode=disable`, as the provisioner writes for loopback and HAProxy, that is the
/// database being unreachable (503); sqlx's default (`prefer`) would first ask for TLS and read
/// the close as a protocol error.
#[tokio::test]
async fn a_proxy_that_closes_every_connection_is_an_unreachable_database() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = proxy.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = proxy.accept().await {
            // HAProxy reads what the client sends first, then closes (FIN) when no server takes it.
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut first = [0u8; 64];
                let _ = connection.read(&mut first).await;
                drop(connection);
            });
        }
    });
    let url = DatabaseUrl::from_str(&format!(
        "postgres://user:pw@127.0.0.1:{port}/db?sslmode=disable"
    ))
    .expect("a PostgreSQL URL");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy_with(url.connect_options().clone());
    let app = crate::helpers::app(pool);
    crate::helpers::get(&app, "/api/movies/1")
        .await
        .assert_error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        );
}
