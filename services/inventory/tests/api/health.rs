//! `/health` says the process is alive; `/ready` also vouches for the database.

use std::time::{Duration, Instant};

use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::helpers::{app, get, send};

/// A pool whose database never answers: 127.0.0.1:1 refuses connections.
fn unreachable_database(db: &PgPool) -> PgPool {
    let options = (*db.connect_options()).clone().port(1);
    PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(options)
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn health_and_ready_answer_200_when_the_database_is_up(db: PgPool) {
    let app = app(db);
    let reply = get(&app, "/health").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json,
        json!({"status": "ok", "service": "inventory", "version": env!("CARGO_PKG_VERSION")})
    );
    let reply = get(&app, "/ready").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["status"], "ready");
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn with_the_database_down_health_is_200_ready_is_503_and_requests_fail_fast(db: PgPool) {
    let app = app(unreachable_database(&db));
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);

    let started = Instant::now();
    get(&app, "/ready")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    let message = get(&app, "/api/movies")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "an outage must not hang requests: {:?}",
        started.elapsed()
    );
    // The client learns nothing of the connection details.
    assert!(
        !message.contains("127.0.0.1") && !message.contains(":1"),
        "{message}"
    );
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn the_request_id_is_echoed_or_generated(db: PgPool) {
    let app = app(db);
    let request = Request::builder()
        .method(Method::GET)
        .uri("/health")
        .header("x-request-id", "abc-123")
        .body(axum::body::Body::empty())
        .expect("valid request");
    let reply = send(&app, request).await;
    assert_eq!(reply.headers["x-request-id"], "abc-123");

    let reply = get(&app, "/api/movies/404").await;
    let generated = reply.headers["x-request-id"].to_str().expect("ascii");
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
}
