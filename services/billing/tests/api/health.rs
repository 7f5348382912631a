//! The health listener and the whole worker as the binary runs it.

use billing::{consumer::Readiness, Config};
use service_common::ErrorBody;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tower::ServiceExt;
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn health_is_ok_and_ready_is_503_until_consuming(pool: PgPool) {
    let app = billing::health::router(billing::health::HealthState {
        pool,
        readiness: Readiness::default(),
    });
    let response = app
        .clone()
        .oneshot(http_get("/health"))
        .await
        .expect("health");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = json_body(response).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "billing");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let response = app.oneshot(http_get("/ready")).await.expect("ready");
    assert_eq!(response.status(), 503);
    let body: ErrorBody = json_body(response).await;
    assert_eq!(body.error, "not_ready");
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn unknown_paths_and_methods_get_the_platforms_json_error(pool: PgPool) {
    let app = billing::health::router(billing::health::HealthState {
        pool,
        readiness: Readiness::default(),
    });
    let response = app
        .clone()
        .oneshot(http_get("/stats"))
        .await
        .expect("answer");
    assert_eq!(response.status(), 404);
    let body: ErrorBody = json_body(response).await;
    assert_eq!(body.error, "not_found");
    assert_eq!(body.message, "no route for /stats");

    let post = axum::http::Request::post("/health")
        .body(axum::body::Body::empty())
        .expect("request");
    let response = app.oneshot(post).await.expect("answer");
    assert_eq!(response.status(), 405);
    let body: ErrorBody = json_body(response).await;
    assert_eq!(body.error, "method_not_allowed");
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn run_serves_ready_stores_orders_and_exits_ok_on_shutdown(pool: PgPool) {
    let broker = Broker::new().await;
    // The test database on the server of DATABASE_URL, with its credentials: a server that asks
    // for a password (Debian's default for TCP) must get one.
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = admin
        .rsplit_once('/')
        .expect("DATABASE_URL ends with /DATABASE");
    let database_url = format!(
        "{server}/{}",
        pool.connect_options()
            .get_database()
            .expect("test database name")
    );
    // Port 0: the system picks a free port, and the worker serves on this very listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let health_addr = listener.local_addr().expect("addr");
    let config = Config {
        database_url: database_url.parse().expect("a PostgreSQL URL"),
        amqp_url: amqp_url().parse().expect("AMQP_URL"),
        amqp_ca_file: None,
        billing_queue: broker.queue.clone(),
        health_listen_addr: health_addr,
        prefetch: 100,
        batch_size: 100,
        batches_in_flight: 2,
        batch_timeout_ms: 50,
        max_backoff_ms: 500,
        server: http_serve::ServerArgs::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(billing::run(config, listener, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let ready_url = format!("http://{health_addr}/ready");
    eventually("/ready answers 200", || async {
        matches!(client.get(&ready_url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let id = Uuid::new_v4();
    broker
        .publish(&order_json("via_run", 2, "19.99"), Some(id))
        .await;
    eventually("the order is stored", || stored(&pool, id)).await;

    let _ = stop.send(());
    tokio::time::timeout(WAIT, running)
        .await
        .expect("run returns after shutdown")
        .expect("no panic")
        .expect("run exits Ok");
    assert!(
        client.get(&ready_url).send().await.is_err(),
        "the health listener is closed after shutdown"
    );
    broker.cleanup().await;
}
