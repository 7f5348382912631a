//! Liveness (`/health`: the process answers) and readiness (`/ready`: the database answers too).

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tracing::instrument;

use crate::error::{Error, Result};
use crate::AppState;

/// How long `/ready` waits for the database before declaring the service not ready; short, so a
/// load balancer or the gateway learns of an outage quickly.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes `/health` and `/ready`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// 200 as long as the process serves HTTP; never touches the database, so a database outage does
/// not get a healthy process restarted.
#[instrument]
async fn health() -> Json<Value> {
    Json(json!({
        "status": "ok",
        "service": "inventory",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// 200 when `SELECT 1` succeeds within [`READINESS_TIMEOUT`], else 503 with the error body.
#[instrument(skip(state))]
async fn ready(State(state): State<AppState>) -> Result<Json<Value>> {
    let ping = sqlx::query("SELECT 1").execute(&state.db);
    match tokio::time::timeout(READINESS_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(Json(json!({
            "status": "ready",
            "service": "inventory",
            "version": env!("CARGO_PKG_VERSION"),
        }))),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness check failed");
            Err(Error::NotReady("the database does not answer".to_owned()))
        }
        Err(_elapsed) => Err(Error::NotReady(format!(
            "the database did not answer within {}s",
            READINESS_TIMEOUT.as_secs()
        ))),
    }
}
