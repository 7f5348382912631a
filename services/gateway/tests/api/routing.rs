//! What the gateway answers by itself: health, unknown routes, wrong methods, oversized bodies.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{config, echo_app, serve, TestGateway, DEAD_BROKER};

async fn gateway() -> TestGateway {
    let upstream = serve(echo_app("a")).await;
    TestGateway::spawn(config(&[upstream], DEAD_BROKER, "unused")).await
}

async fn error_code(response: reqwest::Response) -> String {
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn health_answers_the_platform_contract_even_without_broker() {
    let gateway = gateway().await;
    let response = gateway.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "ok", "service": "gateway", "version": env!("CARGO_PKG_VERSION")})
    );

    let response = gateway.get("/ready").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(response).await, "not_ready");
    gateway.stop().await;
}

#[tokio::test]
async fn unknown_route_is_json_404_and_wrong_method_json_405() {
    let gateway = gateway().await;
    let response = gateway.get("/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "not_found");

    // Not a prefix match: /api/moviesX is not the catalogue.
    let response = gateway.get("/api/moviesX").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    for (method, path) in [
        (reqwest::Method::GET, "/api/billing"),
        (reqwest::Method::DELETE, "/api/billing"),
        (reqwest::Method::POST, "/health"),
    ] {
        let response = gateway
            .client
            .request(method, gateway.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(error_code(response).await, "method_not_allowed");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_json_413_on_every_route() {
    let gateway = gateway().await;
    let big = vec![b'x'; 1024 * 1024 + 1];
    for path in ["/api/movies", "/api/billing"] {
        let response = gateway
            .client
            .post(gateway.url(path))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(error_code(response).await, "payload_too_large");
    }
    // Without Content-Length (chunked), the limit still holds.
    let response = post_chunked(gateway.address, "/api/movies", 17, 64 * 1024).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    gateway.stop().await;
}

/// Posts `chunks` chunks of `chunk_size` bytes with chunked transfer encoding over a raw
/// connection (reqwest cannot send a body of unknown length without its `stream` feature), and
/// returns the beginning of the answer.
async fn post_chunked(
    address: std::net::SocketAddr,
    path: &str,
    chunks: usize,
    chunk_size: usize,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{chunk_size:x}\r\n{}\r\n", "y".repeat(chunk_size));
    for _ in 0..chunks {
        // The server may answer and close before everything is sent; that is the point.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_trailing_slash_means_the_same_as_none_on_every_route() {
    let upstream = serve(echo_app("a")).await;
    let queue = crate::helpers::unique_queue();
    let broker = crate::helpers::Broker::connect().await;
    let gateway =
        TestGateway::spawn(config(&[upstream], &crate::helpers::amqp_url(), &queue)).await;
    gateway.wait_ready().await;

    // The crud-master audit's own URLs: inventory is asked the canonical path.
    for (method, path, upstream_path) in [
        ("POST", "/api/movies/", "/api/movies"),
        ("GET", "/api/movies/", "/api/movies"),
        ("GET", "/api/movies/7/", "/api/movies/7"),
        ("GET", "/api/movies/?title=alien", "/api/movies"),
    ] {
        let response = gateway
            .client
            .request(method.parse().unwrap(), gateway.url(path))
            .json(&serde_json::json!({"title": "Alien"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method} {path}");
        let echoed: Value = response.json().await.unwrap();
        assert_eq!(echoed["path"], upstream_path, "{method} {path}");
    }
    let response = gateway.get("/api/movies/?title=alien").await;
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["query"], "title=alien");

    let response = gateway
        .client
        .post(gateway.url("/api/billing/"))
        .json(&serde_json::json!({"user_id": "20", "number_of_items": "99", "total_amount": "250"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(broker.message_count(&queue).await, 1);
    for path in ["/health/", "/ready/"] {
        assert_eq!(gateway.get(path).await.status(), StatusCode::OK, "{path}");
    }
    broker.delete_queue(&queue).await;
    broker.close().await;
    gateway.stop().await;
}
