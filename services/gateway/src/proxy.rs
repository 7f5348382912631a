//! The reverse proxy in front of inventory: `/api/movies` and everything under it is forwarded, as
//! is, to one of the configured inventory instances, and inventory's answer comes back unchanged
//! except for hop-by-hop headers.
//!
//! Instances are used round-robin. One that cannot be connected to is skipped for the request
//! (retrying is safe whatever the method, since nothing was sent) and tried only after the others
//! for a short cool-off. A request that was sent and got no answer (the instance closed a kept-alive
//! connection as the request went out, or died under it) is retried once, on the next instance, only
//! when its method is safe (GET, HEAD, OPTIONS): any other may have had its effect.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderName, Method, Response};
use axum::routing::any;
use axum::Router;
use serde::Serialize;
use tokio::time::Instant;

use crate::body::read_limited;
use crate::config::{Config, InventoryUrl};
use crate::error::Error;
use crate::pool::{Pool, PooledBody};
use crate::AppState;

/// The routes this module answers: the movie catalogue, all methods.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/movies", any(forward))
        .route("/api/movies/{*rest}", any(forward))
}

/// Whether `name` concerns one connection only (RFC 9110 §7.6.1, plus the proxy authentication
/// pair of RFC 9110 §11.7): such headers are never forwarded in either direction.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// How long a kept-alive connection to inventory may stay unused before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The inventory instances and their pools of kept-alive connections.
#[derive(Debug)]
pub struct InventoryProxy {
    upstreams: Vec<Upstream>,
    /// Round-robin cursor; wraps around harmlessly.
    next: AtomicUsize,
    /// Deadline for the response headers, and longest pause while streaming the response body.
    timeout: Duration,
    /// How long an instance that could not be connected to is tried only after the others.
    cooldown: Duration,
    max_body_bytes: usize,
}

/// One inventory instance and what we last learnt about it.
#[derive(Debug)]
struct Upstream {
    url: InventoryUrl,
    pool: Arc<Pool>,
    /// `gateway_upstream_duration_seconds` of this instance, looked up once rather than by its
    /// labels on every request.
    duration: metrics::Histogram,
    /// Until when the instance is tried last; `None` when it is believed up.
    down_until: Mutex<Option<Instant>>,
}

/// What `/ready` shows about an instance.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub url: String,
    /// `up`, or `cooling_off` after a failed connection.
    pub state: &'static str,
}

impl Upstream {
    fn cooling_off_for(&self, now: Instant) -> Option<Duration> {
        let down_until = *self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        down_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    fn mark_down(&self, cooldown: Duration) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + cooldown);
    }

    fn mark_up(&self) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The TLS client of the inventory connections: the CA file alone, and the gateway's own
/// certificate when one is given. Without any `https://` URL it is never used.
fn inventory_tls(config: &Config) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context as _;
    let https = config.inventory_url.iter().any(|url| url.https);
    let tls = match (&config.inventory_ca_file, &config.inventory_client_cert_file, &config.inventory_client_key_file) {
        (Some(ca), Some(cert), Some(key)) => {
            service_common::tls::client_config_with_identity(ca, cert, key)
        }
        (Some(ca), _, _) => service_common::tls::client_config(ca),
        (None, _, _) if https => anyhow::bail!(
            "INVENTORY_URL is https:// but INVENTORY_CA_FILE is not set: the CA that signed inventory's certificate is needed to verify it"
        ),
        (None, _, _) => service_common::tls::client_config_trusting_none(),
    }
    .context("the inventory's TLS")?;
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

impl InventoryProxy {
    /// The connection pools of `config`'s inventory URLs; `https://` ones are verified against
    /// INVENTORY_CA_FILE alone (refused at start-up without it).
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let tls = inventory_tls(config)?;
        let mut upstreams = Vec::with_capacity(config.inventory_url.len());
        for url in &config.inventory_url {
            let pool = Pool::new(
                url,
                &tls,
                config.upstream_connect_timeout(),
                IDLE_TIMEOUT,
                config.server_threads(),
            )
            .with_context(|| format!("the inventory URL {url}"))?;
            upstreams.push(Upstream {
                url: url.clone(),
                pool: Arc::new(pool),
                duration: metrics::histogram!(
                    "gateway_upstream_duration_seconds",
                    "upstream" => url.to_string()
                ),
                down_until: Mutex::new(None),
            });
        }
        Ok(Self {
            upstreams,
            next: AtomicUsize::new(0),
            timeout: config.upstream_timeout(),
            cooldown: config.upstream_cooldown(),
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The instances and whether each is currently in the rotation.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let now = Instant::now();
        self.upstreams
            .iter()
            .map(|upstream| UpstreamStatus {
                url: upstream.url.to_string(),
                state: if upstream.cooling_off_for(now).is_some() {
                    "cooling_off"
                } else {
                    "up"
                },
            })
            .collect()
    }

    /// Sends the request to the first instance that accepts a connection: those in the rotation
    /// first, in round-robin order, then, as a last resort, those cooling off, soonest back first.
    /// The last resort means a lone instance that has come back serves at once, instead of every
    /// client being turned away for the rest of its cool-off.
    async fn send(
        &self,
        method: &Method,
        path_and_query: &PathAndQuery,
        fields: &[u8],
        body: &Bytes,
    ) -> Result<Response<PooledBody>, Error> {
        let count = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // Room for the retry of a lone instance too.
        let mut order: Vec<&Upstream> = Vec::with_capacity(count + 1);
        let mut resting = Vec::new();
        for offset in 0..count {
            let upstream = &self.upstreams[(start + offset) % count];
            match upstream.cooling_off_for(now) {
                Some(left) => resting.push((left, upstream)),
                None => order.push(upstream),
            }
        }
        resting.sort_by_key(|(left, _)| *left);
        order.extend(resting.into_iter().map(|(_, upstream)| upstream));
        let mut last_connect_error = None;
        let mut retried = false;
        let mut index = 0;
        while let Some(&upstream) = order.get(index) {
            index += 1;
            let started = Instant::now();
            let sent = upstream
                .pool
                .send(method, path_and_query.as_str(), fields, body)
                .await;
            match &sent {
                Ok(_) => upstream.duration.record(started.elapsed().as_secs_f64()),
                Err(err) => {
                    let label = upstream.url.to_string();
                    let kind = if err.is_connect() {
                        "connect"
                    } else {
                        "no_answer"
                    };
                    metrics::counter!("gateway_upstream_errors_total", "upstream" => label, "kind" => kind)
                        .increment(1);
                }
            }
            match sent {
                Ok(response) => {
                    upstream.mark_up();
                    return Ok(response);
                }
                Err(err) if err.is_connect() => {
                    tracing::warn!(
                        upstream = %upstream.url,
                        error = %service_common::ErrorChain(&err),
                        cooldown_ms = self.cooldown.as_millis() as u64,
                        "cannot connect to inventory; trying it last for a while"
                    );
                    upstream.mark_down(self.cooldown);
                    last_connect_error = Some(err);
                }
                Err(err) if method.is_safe() && !retried && !is_timeout(&err) => {
                    tracing::warn!(
                        upstream = %upstream.url,
                        error = %service_common::ErrorChain(&err),
                        "inventory gave no answer to a safe request; retrying it once"
                    );
                    retried = true;
                    // On the next instance; a lone instance gets it again, on another connection.
                    if index == order.len() {
                        order.push(upstream);
                    }
                }
                Err(err) => return Err(Error::BadGateway(err.into())),
            }
        }
        match last_connect_error {
            Some(err) if is_timeout(&err) => Err(Error::GatewayTimeout),
            Some(err) => Err(Error::BadGateway(err.into())),
            None => Err(Error::Internal(anyhow::anyhow!(
                "no inventory instance is configured"
            ))),
        }
    }
}

/// Whether an error was, at bottom, a timed-out connection attempt.
fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = current.source();
    }
    false
}

/// The headers `Connection` names, which concern this connection only too. Most messages have
/// no `Connection` header: then nothing is allocated.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Removes the hop-by-hop headers: the fixed list, and every header named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: a look at each of their few headers costs less than a removal by
    // name of each of the nine. A header named in `Connection` goes only with `Connection`.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed = connection_named(headers);
    doomed.extend(headers.keys().filter(|name| is_hop_by_hop(name)).cloned());
    for name in &doomed {
        headers.remove(name);
    }
}

/// Writes `ip` as `Display` does. An IPv4 address is written digit by digit: its `Display`, which
/// honours width and padding, was a fortieth of the instructions of a proxied GET.
fn write_address(out: &mut Vec<u8>, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        out.extend_from_slice(ip.to_string().as_bytes());
        return;
    };
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// Writes the header fields inventory receives, one `name: value` line each: the client's
/// end-to-end headers plus the `X-Forwarded-*` trio. `Host` and `Content-Length` are for the
/// client of the new hop to write, and `Expect` is dropped: the gateway has the whole body
/// before it sends anything. Written once per request, rather than edited into a header map
/// (each insertion and removal there hashes the name).
fn upstream_fields(headers: &HeaderMap, client: Option<SocketAddr>) -> Vec<u8> {
    let named = if headers.contains_key(header::CONNECTION) {
        connection_named(headers)
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(256);
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    let (mut forwarded_proto, mut forwarded_host) = (false, false);
    for (name, value) in headers {
        if *name == header::HOST
            || *name == header::CONTENT_LENGTH
            || *name == header::EXPECT
            || *name == X_FORWARDED_FOR
            || is_hop_by_hop(name)
            || named.contains(name)
        {
            continue;
        }
        forwarded_proto |= *name == X_FORWARDED_PROTO;
        forwarded_host |= *name == X_FORWARDED_HOST;
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    // A proxy in front of us knows better than we do which scheme and host the client used.
    if !forwarded_proto {
        line(b"x-forwarded-proto", b"http");
    }
    if let Some(host) = headers.get(header::HOST).filter(|_| !forwarded_host) {
        line(b"x-forwarded-host", host.as_bytes());
    }
    // The chain so far, as one list, with the client's address last.
    let mut chain = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if client.is_some() || chain.peek().is_some() {
        out.extend_from_slice(b"x-forwarded-for: ");
        let mut first = true;
        for previous in chain {
            if !first {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(previous.as_bytes());
            first = false;
        }
        if let Some(client) = client {
            if !first {
                out.extend_from_slice(b", ");
            }
            write_address(&mut out, client.ip());
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Forwards the request to inventory and streams its answer back.
async fn forward(State(state): State<AppState>, request: Request) -> Result<Response<Body>, Error> {
    let proxy = &state.proxy;
    let (parts, body) = request.into_parts();
    let body = read_limited(&parts.headers, body, proxy.max_body_bytes).await?;
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let fields = upstream_fields(&parts.headers, client);

    // The deadline covers every connection attempt too, so trying several dead instances cannot
    // add up to more than one timeout.
    let response = tokio::time::timeout(
        proxy.timeout,
        proxy.send(&parts.method, &path_and_query, &fields, &body),
    )
    .await
    .map_err(|_| Error::GatewayTimeout)??;

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // An answer whose body stalls is cut off rather than left hanging.
    let body = Body::new(http_serve::pause::PauseTimeout::new(body, proxy.timeout));
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x-end-to-end"], "kept");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.168.100.9",
            "1.20.3.40",
            "127.0.0.7",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            let mut out = Vec::new();
            write_address(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("text"), ip.to_string());
        }
    }

    /// The fields `upstream_fields` writes, as text, one per line.
    fn fields(headers: &HeaderMap, client: Option<&str>) -> Vec<String> {
        let client = client.map(|text| text.parse::<SocketAddr>().expect("an address"));
        let out = String::from_utf8(upstream_fields(headers, client)).expect("text");
        let lines = out.strip_suffix("\r\n").expect("CRLF at the end");
        lines.split("\r\n").map(str::to_owned).collect()
    }

    #[test]
    fn adds_forwarded_headers_and_appends_to_existing_chain() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gw.example:8080"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(
            fields(&headers, Some("127.0.0.7:5555")),
            [
                "x-request-id: abc",
                "x-forwarded-proto: http",
                "x-forwarded-host: gw.example:8080",
                "x-forwarded-for: 203.0.113.9, 198.51.100.2, 127.0.0.7",
            ]
        );
        // What a proxy in front of us said is kept; no client address, no new link.
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("films.example"));
        headers.insert(header::HOST, HeaderValue::from_static("10.0.0.10:8080"));
        assert_eq!(
            fields(&headers, None),
            [
                "x-forwarded-proto: https",
                "x-forwarded-host: films.example"
            ]
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert_eq!(
            fields(&headers, Some("10.0.0.1:1")),
            [
                "authorization: Bearer t",
                "x-forwarded-proto: http",
                "x-forwarded-for: 10.0.0.1",
            ]
        );
    }
}
