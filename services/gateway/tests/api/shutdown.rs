//! Stopping the gateway (SIGTERM, a restart in a rolling deploy): a request in flight is answered,
//! and then the port is closed.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{config, serve, unique_queue, TestGateway, DEAD_BROKER};

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered_before_the_gateway_exits() {
    // An inventory that takes 800 ms to answer the list.
    let slow = serve(Router::new().route(
        "/api/movies",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            Json(json!([]))
        }),
    ))
    .await;
    let gateway = TestGateway::spawn(config(&[slow], DEAD_BROKER, &unique_queue())).await;
    let address = gateway.address;
    // A first answer: the client now holds an idle keep-alive connection to the gateway too.
    assert_eq!(gateway.get("/health").await.status(), StatusCode::OK);

    let client = gateway.client.clone();
    let url = gateway.url("/api/movies");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    gateway.stop().await;
    assert!(
        stopping.elapsed() >= Duration::from_millis(400),
        "the gateway waited for the request in flight ({:?})",
        stopping.elapsed()
    );
    let response = in_flight
        .await
        .expect("no panic")
        .expect("the request in flight is answered, not cut");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "the port is closed once the gateway has stopped"
    );
}
