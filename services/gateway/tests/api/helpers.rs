//! What every test shares: starting a gateway, an echo upstream, and talking to RabbitMQ.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gateway::Config;
use lapin::options::QueueDeleteOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The broker of the tests: `AMQP_URL`, or the local RabbitMQ's default account.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The `host:port` of the tests' broker, for the relays in front of it.
pub fn broker_address() -> String {
    let target: http::Uri = amqp_url().parse().unwrap();
    format!(
        "{}:{}",
        target.host().unwrap(),
        target.port_u16().unwrap_or(5672)
    )
}

/// A broker address where nothing listens.
pub const DEAD_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// A queue name no other test uses.
pub fn unique_queue() -> String {
    format!("gateway-test-{}", uuid::Uuid::new_v4())
}

/// A configuration for tests: short timeouts so failures show quickly.
pub fn config(inventory: &[String], amqp: &str, queue: &str) -> Config {
    Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        inventory_url: inventory.iter().map(|url| url.parse().unwrap()).collect(),
        inventory_ca_file: None,
        inventory_client_cert_file: None,
        inventory_client_key_file: None,
        amqp_url: amqp.parse().unwrap(),
        amqp_ca_file: None,
        billing_queue: queue.to_owned(),
        max_body_bytes: 1024 * 1024,
        upstream_connect_timeout_ms: 1_000,
        upstream_timeout_ms: 3_000,
        upstream_cooldown_ms: 2_000,
        publish_timeout_ms: 5_000,
        // Several, where the default is one, so that the tests' orders take the channels in turn.
        publish_channels: std::num::NonZeroU16::new(4).unwrap(),
        rate_limit_per_second: None,
        rate_limit_burst: None,
        metrics_listen_addr: None,
        auth_jwt_secret: None,
        auth_jwt_public_key_file: None,
        // Two threads, whatever the machine: requests and upstream connections cross them.
        server_threads: 2,
        server: gateway::ServerArgs::default(),
    }
}

/// A gateway running in this process; stopped (gracefully) when dropped.
pub struct TestGateway {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    pub async fn spawn(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(gateway::run(config, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            shutdown: Some(shutdown),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// A plain `GET path`, as most tests send it.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// Waits until `/ready` says the broker is connected.
    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(response) = self.client.get(self.url("/ready")).send().await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the gateway never became ready");
    }

    /// Stops the gateway and checks it exits cleanly.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("the gateway did not stop within 10 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Serves `app` on a loopback port; returns its base URL.
pub async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// A base URL where nothing listens: a port that was just bound and released.
pub async fn dead_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// An upstream that describes the request it got as JSON, named `name`.
///
/// Request headers steer it: `x-echo-status` (status to answer), `x-echo-delay-ms` (sleep
/// first), `x-echo-raw-body` (answer this text instead of the description). It always answers
/// an end-to-end header `x-upstream: <name>` and hop-by-hop headers that must not reach the client.
pub fn echo_app(name: &'static str) -> Router {
    Router::new().fallback(move |request: Request| echo(name, request))
}

async fn echo(name: &'static str, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(delay) = header("x-echo-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = header("x-echo-status")
        .and_then(|v| v.parse::<u16>().ok())
        .map_or(StatusCode::OK, |s| StatusCode::from_u16(s).unwrap());
    let mut headers = HeaderMap::new();
    headers.insert("x-upstream", HeaderValue::from_static(name));
    headers.insert("connection", HeaderValue::from_static("x-upstream-hop"));
    headers.insert("x-upstream-hop", HeaderValue::from_static("must not pass"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
    if let Some(raw) = header("x-echo-raw-body") {
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        return (status, headers, raw.to_owned()).into_response();
    }
    let request_headers: BTreeMap<String, Vec<String>> =
        parts.headers.keys().fold(BTreeMap::new(), |mut map, key| {
            let values = parts
                .headers
                .get_all(key)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            map.insert(key.as_str().to_owned(), values);
            map
        });
    let description = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": request_headers,
        "body": String::from_utf8_lossy(&body),
    });
    (status, headers, axum::Json(description)).into_response()
}

/// The first value of a header in an echo description, if any.
pub fn echoed_header<'a>(description: &'a Value, name: &str) -> Option<&'a str> {
    description["headers"][name][0].as_str()
}

/// A connection and channel of the test's own, to look into queues.
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
}

impl Broker {
    pub async fn connect() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run at AMQP_URL for these tests");
        let channel = connection.create_channel().await.unwrap();
        Self {
            connection,
            channel,
        }
    }

    /// How many messages wait in `queue` (declaring it as the gateway does, if needed).
    pub async fn message_count(&self, queue: &str) -> u32 {
        service_common::declare_billing_queue(&self.connection, queue)
            .await
            .unwrap()
            .message_count()
    }

    /// Deletes `queue` and the dead-letter queue declared beside it.
    pub async fn delete_queue(&self, queue: &str) {
        for queue in [
            queue.to_owned(),
            service_common::dead_letter_queue_name(queue),
        ] {
            self.channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "test done").await;
    }
}

/// A TCP relay to RabbitMQ whose connections the test can cut, as a broker restart or a network
/// failure would, without disturbing the shared broker.
pub struct CuttableRelay {
    /// `AMQP_URL`, pointed at the relay instead of the broker.
    pub amqp_url: String,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttableRelay {
    pub async fn start() -> Self {
        let broker = broker_address();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = connections.clone();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refusals = refused.clone();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_down = down.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_down.load(std::sync::atomic::Ordering::SeqCst) {
                    refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let broker = broker.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&broker).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().unwrap().push(task.abort_handle());
            }
        });
        let userinfo_and_rest = amqp_url();
        let (_, after_at) = userinfo_and_rest.rsplit_once('@').unwrap();
        let vhost = after_at.split_once('/').map_or("", |(_, vhost)| vhost);
        Self {
            amqp_url: format!("amqp://guest:guest@{address}/{vhost}"),
            connections,
            accepted,
            refused,
            down,
        }
    }

    /// How many connections the relay has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections the relay has dropped unrelayed while it was down: the attempts of
    /// a client that retries.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// While down, the relay drops every connection it accepts (a broker that is away), and
    /// cuts those it relays.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Drops every relayed connection at once; new connections are still relayed.
    pub fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// A TCP relay to the broker that can go silent: it then forwards nothing either way and keeps
/// both sockets open, as a broker whose machine lost its power looks to its clients.
pub struct FreezableRelay {
    address: std::net::SocketAddr,
    frozen: Arc<AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl FreezableRelay {
    pub async fn start() -> Self {
        let broker = broker_address();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let is_frozen = frozen.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let outbound = tokio::net::TcpStream::connect(&broker).await.unwrap();
                let (from_client, to_client) = inbound.into_split();
                let (from_broker, to_broker) = outbound.into_split();
                tokio::spawn(pump(from_client, to_broker, is_frozen.clone()));
                tokio::spawn(pump(from_broker, to_client, is_frozen.clone()));
            }
        });
        Self {
            address,
            frozen,
            accepted,
        }
    }

    /// `AMQP_URL` through the relay, with a 1 s heartbeat.
    pub fn url(&self) -> String {
        let mut url = reqwest::Url::parse(&amqp_url()).unwrap();
        url.set_port(Some(self.address.port())).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_query(Some("heartbeat=1"));
        url.into()
    }

    /// From now on the relay forwards nothing, on the connections it has and on new ones.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// How many connections the relay has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.load(Ordering::SeqCst) {
            // Holds both sockets open and forwards nothing, for as long as the test runs.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
