//! The gateway: the platform's single entry point. It proxies `/api/movies` to inventory and
//! publishes billing orders to RabbitMQ with publisher confirms.
//!
//! Invariant: the gateway never opens a database connection; inventory owns the catalogue and
//! billing is the only writer of orders.

pub mod auth;
pub mod billing;
pub mod body;
pub mod config;
pub mod error;
pub mod health;
pub mod http1;
pub mod pool;
pub mod proxy;
pub mod rate_limit;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{MatchedPath, Request};
use axum::Router;
use tokio::net::TcpListener;

pub use billing::{Publisher, PublisherTask};
pub use config::Config;
pub use error::Error;
pub use http_serve::ServerArgs;
pub use proxy::InventoryProxy;

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The pooled client in front of the inventory instances.
    pub proxy: Arc<InventoryProxy>,
    /// The confirm-mode publisher of billing orders.
    pub publisher: Publisher,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// The per-client limit of API requests, when configured.
    pub rate_limit: Option<rate_limit::RateLimit>,
    /// The bearer tokens the writing methods need, when configured.
    pub auth: Option<auth::Auth>,
}

impl AppState {
    /// Builds the state and starts the broker connection in the background; the returned task
    /// must be stopped once the server is done. Fails on a broker TLS setting it cannot use.
    pub fn build(config: &Config) -> anyhow::Result<(Self, PublisherTask)> {
        let (publisher, task) = Publisher::start(
            config.broker()?,
            config.billing_queue.clone(),
            config.publish_timeout(),
            config.publish_channels,
        );
        let state = Self {
            proxy: Arc::new(InventoryProxy::new(config)?),
            publisher,
            max_body_bytes: config.max_body_bytes,
            rate_limit: config
                .rate_limit_per_second
                .map(|per_second| rate_limit::RateLimit::new(per_second, config.rate_limit_burst)),
            auth: auth::Auth::from_config(config)?,
        };
        Ok((state, task))
    }
}

/// Every route of the gateway, with request ids, tracing, and JSON 404/405.
pub fn router(state: AppState) -> Router {
    // The API, its writes authenticated and every request rate-limited per client (the outer
    // layer, so that a flood of bad tokens is limited too) when configured; health and readiness
    // never are.
    let mut api = Router::new()
        .merge(proxy::router())
        .merge(billing::router());
    if let Some(auth) = state.auth.clone() {
        api = api.route_layer(axum::middleware::from_fn_with_state(auth, auth::enforce));
    }
    // Every routed request is counted by route template, rate-limited ones too. Both layers are
    // given at once: each `route_layer` boxes the route and its future anew.
    let api = match state.rate_limit.clone() {
        Some(limit) => api.route_layer((http_serve::metrics::TrackLayer, limit)),
        None => api.route_layer(http_serve::metrics::TrackLayer),
    };
    let routes = Router::new()
        .merge(health::router().route_layer(http_serve::metrics::TrackLayer))
        .merge(api);
    http_serve::with_json_fallbacks(routes)
        // The request id is set before the span is made, so every log line of the request
        // carries it, and it is copied onto the response. Failures are logged once, with their
        // cause chain, by `Error`.
        .layer(http_serve::observe::ObserveLayer::new(request_span))
        .with_state(state)
}

/// Each request's span: its fields are on every line logged while it is served, the answer's line
/// among them. `message_id` is filled in by an order the broker confirmed, so that one line says
/// which message the order became.
fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get(http_serve::observe::REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        path = request.uri().path(),
        route,
        message_id = tracing::field::Empty,
    )
}

/// Serves the gateway on `listener` until `shutdown` completes, then lets in-flight requests
/// finish and closes the broker connection.
///
/// The caller's runtime must be single-threaded: its thread is the first serving thread
/// ([`http_serve::FirstThread::Caller`]), and runs the broker connection's tasks too. Every order
/// wakes them (its frames to write) and is woken by them (its confirm): from the connections of
/// that thread, which takes every connection while it has room, without crossing threads. While
/// those tasks ran on a multi-threaded runtime of their own, most of those wake-ups crossed
/// threads (an eventfd write each, then a sleeping thread to wake): an order cost the gateway 27
/// to 34 µs of CPU in `scripts/bench` then, and 18 to 24 since (README).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    http_serve::metrics::init("gateway", env!("CARGO_PKG_VERSION"));
    // `/metrics` on a listener of its own, never on the public port.
    let metrics = match config.metrics_listen_addr {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (METRICS_LISTEN_ADDR)"))?;
            let stop = tokio_util::sync::CancellationToken::new();
            let routes =
                Router::new().route("/metrics", axum::routing::get(http_serve::metrics::render));
            let served = http_serve::serve(
                listener,
                http_serve::with_json_fallbacks(routes),
                config.server.limits(),
                stop.clone().cancelled_owned(),
            );
            Some((stop, tokio::spawn(served)))
        }
        None => None,
    };
    let (state, publisher_task) = AppState::build(&config)?;
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    tracing::info!(
        %address,
        inventory = ?config.inventory_url.iter().map(ToString::to_string).collect::<Vec<_>>(),
        queue = %config.billing_queue,
        "gateway listening"
    );
    // The rate limiter's table of clients is pruned of those idle long enough to be full again.
    let pruning = state.rate_limit.clone().map(|limit| {
        tokio::spawn(async move {
            let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every_minute.tick().await;
                limit.forget_idle_clients();
            }
        })
    });
    // Header and body read timeouts, a connection bound, and a trailing slash trimmed before
    // routing (the audit posts to `/api/movies/`), so inventory gets the canonical path too.
    let served = http_serve::serve_on_threads(
        listener,
        router(state),
        config.server.limits(),
        None,
        config.server_threads(),
        http_serve::FirstThread::Caller,
        shutdown,
    )
    .await
    .context("the HTTP server failed");
    if let Some(pruning) = pruning {
        pruning.abort();
    }
    if let Some((stop, task)) = metrics {
        stop.cancel();
        let _ = task.await;
    }
    publisher_task.stop().await;
    served
}
