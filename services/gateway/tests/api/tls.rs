//! HTTPS between the gateway and inventory: the instance's certificate verified against the CA
//! file alone, and the gateway's own certificate when the instance asks for one. A certificate
//! from another CA is refused, whichever side presents it.

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;

use crate::helpers::*;

/// A CA, and certificates it signs, written as PEM files in a folder of their own.
struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
        Self { key, cert, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certificate for `names`, as (certificate file, key file).
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

/// The echo upstream over TLS with `cert` and, when given, asking for a client certificate
/// signed by `client_ca`; returns its `https://` base URL.
async fn serve_tls(cert: (PathBuf, PathBuf), client_ca: Option<PathBuf>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let tls = http_serve::TlsArgs {
        tls_cert_file: Some(cert.0),
        tls_key_file: Some(cert.1),
        tls_client_ca_file: client_ca,
    };
    let config = tls.server_config().unwrap();
    assert!(config.is_some());
    tokio::spawn(http_serve::serve_tls(
        listener,
        echo_app("tls"),
        http_serve::Limits::default(),
        config,
        std::future::pending(),
    ));
    format!("https://{address}")
}

async fn status_through(
    upstream: &str,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> StatusCode {
    // Only inventory's TLS is under test: no broker, so no queue is left behind.
    let mut config = config(&[upstream.to_owned()], DEAD_BROKER, &unique_queue());
    config.inventory_ca_file = Some(ca.to_owned());
    if let Some((cert, key)) = identity {
        config.inventory_client_cert_file = Some(cert.clone());
        config.inventory_client_key_file = Some(key.clone());
    }
    let gateway = TestGateway::spawn(config).await;
    let status = gateway.get("/api/movies").await.status();
    gateway.stop().await;
    status
}

#[tokio::test]
async fn inventory_over_tls_is_verified_against_the_ca_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Ca::new(dir.path(), "platform");
    let other = Ca::new(dir.path(), "other");
    let upstream = serve_tls(platform.issue("inventory", &["127.0.0.1"]), None).await;

    assert_eq!(
        status_through(&upstream, &platform.ca_file(), None).await,
        StatusCode::OK
    );
    // Another CA: the handshake fails, and the client gets the gateway's upstream error.
    assert_eq!(
        status_through(&upstream, &other.ca_file(), None).await,
        StatusCode::BAD_GATEWAY
    );

    // A certificate of the right CA for another address is refused too.
    let upstream = serve_tls(platform.issue("elsewhere", &["10.9.9.9"]), None).await;
    assert_eq!(
        status_through(&upstream, &platform.ca_file(), None).await,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn an_inventory_that_asks_for_a_client_certificate_takes_only_the_platform_s() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Ca::new(dir.path(), "platform");
    let other = Ca::new(dir.path(), "other");
    let upstream = serve_tls(
        platform.issue("inventory", &["127.0.0.1"]),
        Some(platform.ca_file()),
    )
    .await;

    let ours = platform.issue("gateway", &["gateway-vm"]);
    let theirs = other.issue("gateway", &["gateway-vm"]);
    assert_eq!(
        status_through(&upstream, &platform.ca_file(), Some(&ours)).await,
        StatusCode::OK
    );
    assert_eq!(
        status_through(&upstream, &platform.ca_file(), Some(&theirs)).await,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        status_through(&upstream, &platform.ca_file(), None).await,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn an_https_inventory_without_a_ca_file_is_refused_at_start_up() {
    let config = config(
        &["https://127.0.0.1:1".to_owned()],
        DEAD_BROKER,
        &unique_queue(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = gateway::run(config, listener, std::future::pending())
        .await
        .expect_err("refused")
        .to_string();
    assert!(error.contains("INVENTORY_CA_FILE"), "{error}");
}
