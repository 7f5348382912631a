//! Slow and broken clients cannot hold the gateway: headers that never finish close the
//! connection after the header read timeout, a body that stops is a JSON 408 after the body read
//! timeout, and meanwhile everyone else is served at once.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{amqp_url, config, echo_app, serve, unique_queue, Broker, TestGateway};

const SLOW_CONNECTIONS: usize = 200;

/// A gateway with one-second read timeouts, ready, and the queue it declared.
async fn gateway_with_short_timeouts() -> (TestGateway, String) {
    let upstream = serve(echo_app("a")).await;
    let queue = unique_queue();
    let mut config = config(&[upstream], &amqp_url(), &queue);
    config.server.header_read_timeout_ms = 1_000;
    config.server.body_read_timeout_ms = 1_000;
    let gateway = TestGateway::spawn(config).await;
    gateway.wait_ready().await;
    (gateway, queue)
}

/// Stops the gateway and deletes its queues.
async fn stop(gateway: TestGateway, queue: &str) {
    gateway.stop().await;
    let broker = Broker::connect().await;
    broker.delete_queue(queue).await;
    broker.close().await;
}

/// Reads what the server sends until it closes the connection; `None` if it is still open
/// after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    match outcome {
        Ok(_) => Some(String::from_utf8_lossy(&received).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn two_hundred_unfinished_headers_neither_block_others_nor_stay_open() {
    let (gateway, queue) = gateway_with_short_timeouts().await;
    let mut slow = Vec::new();
    for _ in 0..SLOW_CONNECTIONS {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Never: ends")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Everyone else is served at once.
    for path in ["/health", "/api/movies/7"] {
        let started = Instant::now();
        let response = gateway.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    // Then every slow connection is closed by the gateway.
    let started = Instant::now();
    let mut closed = 0;
    for stream in &mut slow {
        if read_until_closed(stream, Duration::from_secs(5))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    println!(
        "{SLOW_CONNECTIONS} connections with unfinished headers: {closed} closed by the gateway \
         within {:?}",
        started.elapsed()
    );
    assert_eq!(closed, SLOW_CONNECTIONS);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    stop(gateway, &queue).await;
}

#[tokio::test]
async fn a_body_that_stops_is_a_json_408_on_billing_and_movies() {
    let (gateway, queue) = gateway_with_short_timeouts().await;
    for path in ["/api/billing", "/api/movies"] {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"user_id\": "
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let answer = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{path}: still waiting after 5 s"));
        let elapsed = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
        assert_eq!(body["error"], "request_timeout", "{path}");
        assert!(elapsed < Duration::from_secs(3), "{path}: {elapsed:?}");
    }
    stop(gateway, &queue).await;
}
