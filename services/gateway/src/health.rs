//! `GET /health` (the process is alive) and `GET /ready` (the broker channel is open, so billing
//! orders can be accepted), as every service of the platform exposes them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::error::Error;
use crate::proxy::UpstreamStatus;
use crate::AppState;

/// The routes this module answers.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// The platform's liveness answer.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub service: &'static str,
    pub version: &'static str,
}

/// The readiness answer: the broker is connected; the inventory instances are listed as last
/// seen by the proxy (informative: inventory has its own `/ready`).
#[derive(Debug, Serialize)]
pub struct Ready {
    pub status: &'static str,
    pub service: &'static str,
    pub broker: &'static str,
    pub upstreams: Vec<UpstreamStatus>,
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        service: "gateway",
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn ready(State(state): State<AppState>) -> Result<Json<Ready>, Error> {
    if !state.publisher.is_connected() {
        return Err(Error::NotReady(
            "not connected to the message broker".to_owned(),
        ));
    }
    if state.publisher.is_blocked() {
        return Err(Error::NotReady(
            "the message broker is blocking publishers (a memory or disk alarm)".to_owned(),
        ));
    }
    Ok(Json(Ready {
        status: "ready",
        service: "gateway",
        broker: "connected",
        upstreams: state.proxy.status(),
    }))
}
