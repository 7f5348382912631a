//! The RabbitMQ URL of the gateway and billing: parsed once with the AMQP client's own parser,
//! with the host that parser loses put back, and never shown with its password.

use std::path::Path;
use std::sync::Arc;
use std::{fmt, str::FromStr};

use amq_protocol_tcp::{RustlsConnector, TcpStream};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use rustls::ClientConfig;

use crate::redact::redact_url_password;

/// Why an `AMQP_URL` was refused; clap prints it next to the variable's name.
#[derive(Debug, thiserror::Error)]
pub enum AmqpUrlError {
    /// The text is not an AMQP URL lapin can connect with. The message never quotes the URL.
    #[error("not an AMQP URL: {0}")]
    Invalid(String),
    /// An `amqps://` URL without the CA to verify the broker with, or a CA file unusable.
    #[error("{0}")]
    Tls(String),
}

/// A broker URL such as `amqp://user:password@10.0.0.13:5672/billing_vhost`.
///
/// It carries a password, so `Debug` and `Display` show it redacted; only
/// [`AmqpUrl::to_amqp_uri`] gives it whole, to hand to `lapin::Connection::connect_uri`.
/// Connect with that, never with `Connection::connect(&str)`: lapin's own parser turns an IPv6
/// address host into "localhost".
#[derive(Clone)]
pub struct AmqpUrl {
    /// The text as given, kept to show it (redacted) exactly as the operator wrote it.
    raw: String,
    /// What the client connects with, host fixed.
    uri: AMQPUri,
    /// For an `amqps://` URL, the TLS client trusting the platform CA alone
    /// ([`AmqpUrls::with_ca_file`]).
    tls: Option<Arc<ClientConfig>>,
}

impl AmqpUrl {
    /// The parsed URL, password included: only for handing to the AMQP client.
    pub fn to_amqp_uri(&self) -> AMQPUri {
        self.uri.clone()
    }

    /// For an `amqps://` URL, the TLS client that verifies the broker (the platform CA alone).
    pub fn tls_config(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref()
    }

    /// Whether the URL asks for TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// Opens a connection to this node: in clear for `amqp://`, over TLS for `amqps://`, the
    /// broker's certificate verified against the CA given to [`AmqpUrls::with_ca_file`] alone and
    /// for the URL's host (a name or an IP address).
    // lapin's connector returns its handshake error by value, however large.
    #[allow(clippy::result_large_err)]
    pub async fn connect(&self, properties: ConnectionProperties) -> lapin::Result<Connection> {
        if !self.is_tls() {
            return Connection::connect_uri(self.to_amqp_uri(), properties).await;
        }
        let Some(tls) = self.tls.clone() else {
            return Err(std::io::Error::other(
                "amqps:// without a CA to verify the broker with (AMQP_CA_FILE)",
            )
            .into());
        };
        let connect = move |uri: &AMQPUri| {
            let address = format!("{}:{}", uri.authority.host, uri.authority.port);
            let stream = match uri.query.connection_timeout {
                Some(timeout) => {
                    TcpStream::connect_timeout(address, std::time::Duration::from_millis(timeout))
                }
                None => TcpStream::connect(address),
            }?;
            // The certificate names an IPv6 address without the URL's brackets.
            let server_name = uri
                .authority
                .host
                .trim_start_matches('[')
                .trim_end_matches(']');
            let stream = stream.into_rustls(&RustlsConnector::from(tls), server_name)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        };
        Connection::connector(self.to_amqp_uri(), Box::new(connect), properties).await
    }

    /// The URL with its password replaced by `***`, safe for logs.
    pub fn redacted(&self) -> String {
        redact_url_password(&self.raw)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for AmqpUrl {
    type Err = AmqpUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Replacing "" would put the name between every character of the message.
        let hide_url = |err: String| {
            if s.is_empty() {
                AmqpUrlError::Invalid(err)
            } else {
                AmqpUrlError::Invalid(err.replace(s, "AMQP_URL"))
            }
        };
        // lapin's own parser, so that a URL accepted here is one the client can use. Its error
        // text may quote the whole URL, password included, hence the replacement.
        let mut uri = AMQPUri::from_str(s).map_err(hide_url)?;
        // amq-protocol-uri 7 keeps the host only when `Url::domain` returns it, which it never
        // does for an IP address: it would connect to "localhost" instead. The same `url` parser
        // tells the address; IPv6 keeps its brackets because lapin joins host and port with ':'.
        let url = url::Url::parse(s).map_err(|err| hide_url(err.to_string()))?;
        match url.host() {
            Some(url::Host::Ipv4(ip)) => uri.authority.host = ip.to_string(),
            Some(url::Host::Ipv6(ip)) => uri.authority.host = format!("[{ip}]"),
            Some(url::Host::Domain(_)) | None => {}
        }
        // RabbitMQ proposes 60 s, and a client notices a dead peer after two missed heartbeats:
        // two minutes of a machine that lost its power looking connected. Unless the URL says
        // otherwise, a few seconds.
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        Ok(Self {
            raw: s.to_owned(),
            uri,
            tls: None,
        })
    }
}

/// The AMQP heartbeat asked for when `AMQP_URL` sets none (`?heartbeat=N` does): a broker
/// that stops answering is given up after twice this.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 5;

/// The broker's nodes: one or more [`AmqpUrl`]s, comma-separated in `AMQP_URL` (a comma inside a
/// password is percent-encoded, `%2C`, as the provisioner writes it). A client connects to one and,
/// when it cannot or loses it, tries the next: with the nodes of a cluster, losing one node's
/// machine costs a reconnection, not the service.
#[derive(Clone)]
pub struct AmqpUrls(Vec<AmqpUrl>);

impl AmqpUrls {
    /// The node to try on attempt `attempt` (0, 1, 2, …): round-robin over the list.
    pub fn node(&self, attempt: usize) -> &AmqpUrl {
        &self.0[attempt % self.0.len()]
    }

    /// How many nodes there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a list is parsed with at least one URL. (Here for `len`'s sake.)
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The nodes with the CA their `amqps://` URLs verify the broker against (`AMQP_CA_FILE`):
    /// that file alone, never the system's roots. An `amqps://` URL without one is refused here,
    /// at start-up, and so is a file that holds no certificate.
    pub fn with_ca_file(mut self, ca_file: Option<&Path>) -> Result<Self, AmqpUrlError> {
        if !self.0.iter().any(AmqpUrl::is_tls) {
            return Ok(self);
        }
        let Some(ca_file) = ca_file else {
            return Err(AmqpUrlError::Tls(
                "AMQP_URL is amqps:// but AMQP_CA_FILE is not set: the CA that signed the broker's certificate is needed to verify it".into(),
            ));
        };
        let tls = crate::tls::client_config(ca_file)
            .map_err(|err| AmqpUrlError::Tls(format!("AMQP_CA_FILE: {err}")))?;
        for url in &mut self.0 {
            url.tls = Some(tls.clone());
        }
        Ok(self)
    }
}

impl From<AmqpUrl> for AmqpUrls {
    fn from(url: AmqpUrl) -> Self {
        Self(vec![url])
    }
}

impl FromStr for AmqpUrls {
    type Err = AmqpUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let several = parts.len() > 1;
        let urls = parts
            .into_iter()
            .enumerate()
            .map(|(index, part)| {
                part.parse::<AmqpUrl>().map_err(|err| match err {
                    AmqpUrlError::Invalid(err) if several => {
                        AmqpUrlError::Invalid(format!("URL {} of the list: {err}", index + 1))
                    }
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(urls))
    }
}

/// The nodes, each redacted, comma-separated.
impl fmt::Display for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(AmqpUrl::redacted).collect();
        f.write_str(&shown.join(","))
    }
}

impl fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrls").field(&self.to_string()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_never_shows_its_password() {
        let url: AmqpUrl = "amqp://guest:s3cret@127.0.0.1:5672/%2f"
            .parse()
            .expect("valid");
        let shown = format!("{url:?} {url}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("guest:***@127.0.0.1:5672/%2f"), "{shown}");
        let uri = url.to_amqp_uri();
        assert_eq!(uri.authority.userinfo.password, "s3cret");
        assert_eq!(uri.vhost, "/");
    }

    #[test]
    fn amqps_needs_a_ca_file_and_amqp_does_not() {
        let plain: AmqpUrls = "amqp://u:p@127.0.0.1/vh".parse().expect("valid");
        assert!(plain.with_ca_file(None).is_ok());
        let tls: AmqpUrls = "amqp://u:p@127.0.0.1/vh,amqps://u:p@10.0.0.2/vh"
            .parse()
            .expect("valid");
        assert!(tls.node(1).is_tls() && !tls.node(0).is_tls());
        assert_eq!(tls.node(1).to_amqp_uri().authority.port, 5671);
        let error = tls
            .clone()
            .with_ca_file(None)
            .expect_err("refused")
            .to_string();
        assert!(error.contains("AMQP_CA_FILE is not set"), "{error}");
        let error = tls
            .with_ca_file(Some(Path::new("/nonexistent/ca.crt")))
            .expect_err("refused")
            .to_string();
        assert!(error.contains("/nonexistent/ca.crt"), "{error}");
    }

    #[test]
    fn an_ip_address_host_is_the_host_connected_to() {
        let uri = "amqp://billing:pw@10.1.2.3:5673/billing_vhost"
            .parse::<AmqpUrl>()
            .expect("valid")
            .to_amqp_uri();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "billing_vhost");
        assert_eq!(uri.authority.userinfo.username, "billing");
        assert_eq!(uri.authority.userinfo.password, "pw");

        // lapin alone makes this one "localhost".
        let uri = "amqp://u:p@[fd00::13]/vh"
            .parse::<AmqpUrl>()
            .expect("valid")
            .to_amqp_uri();
        assert_eq!(uri.authority.host, "[fd00::13]");
        assert_eq!(uri.authority.port, 5672);
    }

    #[test]
    fn a_host_name_and_the_defaults_are_lapins() {
        let uri = "amqp://rabbit.internal"
            .parse::<AmqpUrl>()
            .expect("valid")
            .to_amqp_uri();
        assert_eq!(uri.authority.host, "rabbit.internal");
        assert_eq!(uri.authority.port, 5672);
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.authority.userinfo.username, "guest");
        // Except the heartbeat: seconds, not RabbitMQ's minute, unless the URL says.
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        let uri = "amqp://rabbit.internal/%2f?heartbeat=30"
            .parse::<AmqpUrl>()
            .expect("valid")
            .to_amqp_uri();
        assert_eq!(uri.query.heartbeat, Some(30));
    }

    #[test]
    fn refusals_never_quote_the_password() {
        for bad in [
            "",
            "http://u:s3cret@127.0.0.1/vh",
            "amqp://u:s3cret@127.0.0.1:notaport/vh",
            "amqp:s3cret",
            "amqp://u:s3cret@127.0.0.1/vh?heartbeat=s3cret",
        ] {
            let err = bad.parse::<AmqpUrl>().expect_err(bad);
            assert!(!err.to_string().contains("s3cret"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_list_of_nodes_is_tried_round_robin_and_never_shows_a_password() {
        let urls: AmqpUrls = "amqp://u:s3cret@10.0.0.1/vh, amqp://u:s3cret@10.0.0.2/vh"
            .parse()
            .expect("valid");
        assert_eq!(urls.len(), 2);
        let hosts: Vec<String> = (0..3)
            .map(|attempt| urls.node(attempt).to_amqp_uri().authority.host)
            .collect();
        assert_eq!(hosts, ["10.0.0.1", "10.0.0.2", "10.0.0.1"]);
        let shown = format!("{urls} {urls:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("amqp://u:***@10.0.0.1/vh,amqp://u:***@10.0.0.2/vh"),
            "{shown}"
        );

        let one: AmqpUrls = "amqp://guest:guest@127.0.0.1:5672/%2f"
            .parse()
            .expect("one");
        assert_eq!(one.len(), 1);
        for bad in [
            "",
            "amqp://u:s3cret@h/vh,",
            "amqp://u:s3cret@h/vh,http://u:s3cret@h/",
        ] {
            let err = bad.parse::<AmqpUrls>().expect_err(bad).to_string();
            assert!(!err.contains("s3cret"), "{bad}: {err}");
        }
        let err = "amqp://h/vh,http://h/"
            .parse::<AmqpUrls>()
            .expect_err("second bad")
            .to_string();
        assert!(err.contains("URL 2 of the list"), "{err}");
    }
}
