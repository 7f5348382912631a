//! TLS between the platform's machines, with rustls: the client side trusts the platform CA
//! alone (the file `provision` writes on every host, `/etc/platform-tls/ca.crt`), never the
//! system's roots; the server side serves a host's certificate and key, and may ask its clients
//! for a certificate signed by that CA too.
//!
//! Every error names the file and what is wrong with it, never a key's bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS configuration could not be made from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn file_error(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// The certificates of a PEM file, at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|err| file_error(path, err))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(path, format!("not PEM certificates: {err}")))?;
    if certificates.is_empty() {
        return Err(file_error(
            path,
            "holds no certificate (PEM, BEGIN CERTIFICATE)",
        ));
    }
    Ok(certificates)
}

/// A store trusting the certificates of `ca_file` and nothing else.
pub fn root_store(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca_file)? {
        roots
            .add(certificate)
            .map_err(|err| file_error(ca_file, format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts `ca_file` alone and checks the server's name (or IP
/// address) against its certificate.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(Arc::new(
        client_builder(root_store(ca_file)?)?.with_no_client_auth(),
    ))
}

/// A client configuration that trusts no server at all: for a client whose URLs are all plain,
/// which never makes a TLS connection with it.
pub fn client_config_trusting_none() -> Result<Arc<ClientConfig>, TlsError> {
    Ok(Arc::new(
        client_builder(RootCertStore::empty())?.with_no_client_auth(),
    ))
}

/// ring, TLS 1.2 and 1.3, and these roots alone.
fn client_builder(
    roots: RootCertStore,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots))
}

/// A client configuration like [`client_config`] that also presents a certificate and its key.
pub fn client_config_with_identity(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = client_builder(root_store(ca_file)?)?
        .with_client_auth_cert(read_certificates(cert_file)?, read_key(key_file)?)
        .map_err(|err| {
            file_error(
                key_file,
                format!("cannot be used with {}: {err}", cert_file.display()),
            )
        })?;
    Ok(Arc::new(config))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|err| file_error(path, err))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|err| file_error(path, format!("not a PEM private key: {err}")))
}

/// A server configuration serving `cert_file` (the host's certificate, then any intermediate)
/// with `key_file`. With `client_ca_file`, a client must present a certificate signed by it.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca_file {
        Some(ca_file) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca_file)?),
                provider(),
            )
            .build()
            .map_err(|err| file_error(ca_file, format!("cannot verify clients with it: {err}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certificates(cert_file)?, read_key(key_file)?)
        .map_err(|err| {
            file_error(
                key_file,
                format!("cannot be used with {}: {err}", cert_file.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = client_config(&empty)
            .expect_err("no certificate")
            .to_string();
        assert!(
            err.contains("empty.crt") && err.contains("holds no certificate"),
            "{err}"
        );
        let err = client_config(&dir.join("absent.crt"))
            .expect_err("absent")
            .to_string();
        assert!(err.contains("absent.crt"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
