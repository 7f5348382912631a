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
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response};
use axum::routing::any;
use axum::Router;
use serde::Serialize;
use tokio::time::Instant;

use crate::body::{read_limited, StallTimeout};
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

/// Headers that concern one connection only (RFC 9110 §7.6.1, plus the proxy authentication
/// pair of RFC 9110 §11.7); never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

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
        headers: &HeaderMap,
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
                .send(method, path_and_query.as_str(), headers, body)
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

/// Removes the hop-by-hop headers: the fixed list, and every header named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: a look at each of their few headers costs less than a removal by
    // name of each of the nine. A header named in `Connection` goes only with `Connection`.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// `ip` as a header value. An IPv4 address is written digit by digit: its `Display`, which honours
/// width and padding, was a fortieth of the instructions of a proxied GET.
fn address_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).expect("an IPv6 address is a header value");
    };
    let mut text = [0_u8; 15];
    let mut length = 0;
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text[length] = b'.';
            length += 1;
        }
        if octet >= 100 {
            text[length] = b'0' + octet / 100;
            length += 1;
        }
        if octet >= 10 {
            text[length] = b'0' + octet / 10 % 10;
            length += 1;
        }
        text[length] = b'0' + octet % 10;
        length += 1;
    }
    HeaderValue::from_bytes(&text[..length]).expect("digits and dots are a header value")
}

/// The headers inventory receives: the client's end-to-end headers plus the `X-Forwarded-*`
/// trio. `Host` and `Content-Length` are left for the client to set for the new hop, and
/// `Expect` is dropped: the gateway has the whole body before it sends anything.
fn upstream_headers(mut headers: HeaderMap, client: Option<SocketAddr>) -> HeaderMap {
    let original_host = headers.remove(header::HOST);
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);

    if let Some(client) = client {
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", client.ip())).ok(),
            None => Some(address_value(client.ip())),
        };
        if let Some(value) = forwarded_for {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    // A proxy in front of us knows better than we do which scheme and host the client used.
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = original_host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
    headers
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
    let headers = upstream_headers(parts.headers, client);

    // The deadline covers every connection attempt too, so trying several dead instances cannot
    // add up to more than one timeout.
    let response = tokio::time::timeout(
        proxy.timeout,
        proxy.send(&parts.method, &path_and_query, &headers, &body),
    )
    .await
    .map_err(|_| Error::GatewayTimeout)??;

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // An answer whose body stalls is cut off rather than left hanging.
    let body = Body::new(StallTimeout::new(body, proxy.timeout));
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
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
            assert_eq!(address_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn adds_forwarded_headers_and_appends_to_existing_chain() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gw.example:8080"));
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let client: SocketAddr = "127.0.0.7:5555".parse().expect("addr");
        let out = upstream_headers(headers, Some(client));
        assert_eq!(out[X_FORWARDED_FOR], "203.0.113.9, 127.0.0.7");
        assert_eq!(out[X_FORWARDED_PROTO], "http");
        assert_eq!(out[X_FORWARDED_HOST], "gw.example:8080");
        assert!(!out.contains_key(header::HOST));
        assert!(!out.contains_key(header::CONTENT_LENGTH));
    }
}
