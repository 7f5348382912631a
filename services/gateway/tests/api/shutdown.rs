//! Stopping the gateway (SIGTERM, a restart in a rolling deploy): a request in flight is answered,
//! a kept-alive connection is drained (one more answer, with `Connection: close`), and then the
//! port is closed.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::{config, dead_upstream, serve, unique_queue, TestGateway, DEAD_BROKER};

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

/// Sends `GET /health` on `stream` and reads the answer's head (the body is `{"status":"ok"}`-like
/// and short: read whole with its Content-Length). Returns the head, lower-cased.
async fn get_health(stream: &mut BufReader<TcpStream>) -> String {
    stream
        .get_mut()
        .write_all(b"GET /health HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(
            stream.read_line(&mut line).await.unwrap(),
            0,
            "closed mid-answer"
        );
        head.push_str(&line.to_ascii_lowercase());
        if line == "\r\n" {
            break;
        }
    }
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    head
}

#[tokio::test]
async fn on_shutdown_a_kept_alive_connection_gets_one_more_answer_with_connection_close() {
    let inventory = dead_upstream().await;
    let gateway = TestGateway::spawn(config(&[inventory], DEAD_BROKER, &unique_queue())).await;
    let address = gateway.address;
    let mut busy = BufReader::new(TcpStream::connect(address).await.unwrap());
    let mut idle = BufReader::new(TcpStream::connect(address).await.unwrap());
    assert!(get_health(&mut busy).await.starts_with("http/1.1 200"));
    assert!(get_health(&mut idle).await.starts_with("http/1.1 200"));

    let stopping = Instant::now();
    let stopped = tokio::spawn(gateway.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connection is accepted; the open ones are still served.
    assert!(
        TcpStream::connect(address).await.is_err(),
        "the listener is closed"
    );
    let head = get_health(&mut busy).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    busy.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the connection closes after that answer");

    // The connection that stays idle is closed once the drain time (1 s by default) is over,
    // and then the gateway exits.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let closed_after = stopping.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );
    stopped.await.unwrap();
}
