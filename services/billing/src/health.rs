//! The small HTTP listener of the worker: `/health` (the process is alive) and `/ready` (it is
//! consuming and PostgreSQL answers), so systemd checks and the provisioner can tell the difference.

use std::time::Duration;

use axum::{extract::State, routing::get, Json, Router};
use serde::Serialize;
use sqlx::PgPool;

use crate::{consumer::Readiness, error::NotReady};

/// How long `/ready` waits for `SELECT 1` before calling the database unavailable.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the health handlers look at.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// The pool the consumer writes through.
    pub pool: PgPool,
    /// Whether the consumer currently holds a live AMQP subscription.
    pub readiness: Readiness,
}

/// `{"status": "ok"|"ready", "service": "billing", "version": …}`.
#[derive(Debug, Serialize)]
struct Status {
    status: &'static str,
    service: &'static str,
    version: &'static str,
}

impl Status {
    fn new(status: &'static str) -> Json<Self> {
        Json(Self {
            status,
            service: "billing",
            version: env!("CARGO_PKG_VERSION"),
        })
    }
}

/// `GET /health` and `GET /ready`; anything else is the platform's JSON 404 or 405.
pub fn router(state: HealthState) -> Router {
    let routes = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        // The worker's own figures (messages, rows, dead letters) and the build, Prometheus.
        .route("/metrics", get(http_serve::metrics::render))
        .route_layer(http_serve::metrics::TrackLayer);
    http_serve::with_json_fallbacks(routes).with_state(state)
}

async fn health() -> Json<Status> {
    Status::new("ok")
}

async fn ready(State(state): State<HealthState>) -> Result<Json<Status>, NotReady> {
    if !state.readiness.is_consuming() {
        return Err(NotReady("not connected to RabbitMQ"));
    }
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(Status::new("ready")),
        _ => Err(NotReady("database unavailable")),
    }
}
