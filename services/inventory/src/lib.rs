//! The inventory service: a REST CRUD API over the movie catalogue, stored in PostgreSQL.
//!
//! `main` parses a [`Config`], binds the listener and calls [`run`]; tests call [`router`] with a
//! pool of their own, or [`run`] on a listener bound to port 0.

pub mod config;
pub mod error;
mod extract;
pub mod health;
pub mod movies;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderName;
use axum::{BoxError, Router};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use config::{Config, DatabaseUrl};
pub use error::Error;
pub use http_serve::ServerArgs;

/// The schema of the movies database, embedded in the binary and applied at start-up.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Largest request body accepted, in bytes: a maximal movie (255-character title, 10 000-character
/// description), even with every character `\u`-escaped, fits.
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// Longest time a request may take before the client gets a 503; above the pool's acquire timeout
/// and the statement timeout, so those answer first with a more precise error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a handler waits for a pooled connection: a database outage becomes a 503 after a few
/// seconds instead of a hang.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Most connections held at once; a few per core is plenty for short queries.
pub const MAX_CONNECTIONS: u32 = 10;

/// The header carrying the request id, set by the gateway or generated here, and echoed back.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The movies database.
    pub db: PgPool,
}

/// The whole HTTP API: movies, health, JSON 404 and 405 answers, tracing, timeout and body limit.
pub fn router(state: AppState) -> Router {
    // After every route is added: the 405 fallback only applies to routes already registered.
    // Every routed request is counted by route template (`/metrics`, Prometheus). Inventory's port
    // is open only to the platform's hosts.
    let routes = Router::new()
        .merge(health::router())
        .merge(movies::router())
        .route("/metrics", axum::routing::get(http_serve::metrics::render))
        .route_layer(http_serve::metrics::TrackLayer);
    http_serve::with_json_fallbacks(routes)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
                .layer(HandleErrorLayer::new(timeout_error))
                .timeout(REQUEST_TIMEOUT),
        )
        .with_state(state)
}

/// One span per request, named by the matched route so that logs group by endpoint.
fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok());
    tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        route,
        request_id,
    )
}

/// Turns the timeout layer's error into our JSON error.
async fn timeout_error(err: BoxError) -> Error {
    if err.is::<tower::timeout::error::Elapsed>() {
        Error::Timeout
    } else {
        Error::Internal(format!("unhandled middleware error: {err}"))
    }
}

/// Connects to the database and brings its schema up to date. Fails fast when the database cannot
/// be reached, so that systemd restarts the service rather than it serving only errors.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    // A statement timeout bounds every query, so a stuck one answers with an error, not a hang.
    let options = config
        .database_url
        .connect_options()
        .clone()
        .options([("statement_timeout", "10s")]);
    let context = || format!("cannot connect to the database {}", config.database_url);
    // One direct connection first: a pool reports any failure as "pool timed out", while this
    // names the cause (refused, unknown host, bad password…).
    PgConnection::connect_with(&options)
        .await
        .with_context(context)?
        .close()
        .await
        .with_context(context)?;
    let db = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .with_context(context)?;
    MIGRATOR
        .run(&db)
        .await
        .context("cannot apply the database migrations")?;
    Ok(db)
}

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    http_serve::metrics::init("inventory", env!("CARGO_PKG_VERSION"));
    let tls = config.tls.server_config()?;
    let db = connect(&config).await?;
    let address = listener
        .local_addr()
        .context("cannot read the listener's address")?;
    tracing::info!(%address, tls = tls.is_some(), "inventory listening");
    // Header and body read timeouts, a connection bound, and a trailing slash that means the
    // same as none.
    let limits = config.server.limits();
    http_serve::serve_tls(
        listener,
        router(AppState { db: db.clone() }),
        limits,
        tls,
        shutdown,
    )
    .await
    .context("the HTTP server failed")?;
    db.close().await;
    tracing::info!("inventory stopped");
    Ok(())
}
