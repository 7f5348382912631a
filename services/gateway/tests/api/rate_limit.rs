//! The per-client rate limit, with a real burst over TCP: a client over its limit gets JSON 429s
//! with `Retry-After` and nothing reaches inventory; another address keeps its own allowance;
//! health and readiness are never limited; the allowance comes back with time.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{config, echo_app, serve, TestGateway, DEAD_BROKER};

#[tokio::test]
async fn a_burst_over_the_limit_is_429_per_client_and_health_is_never_limited() {
    let upstream = serve(echo_app("limited")).await;
    let mut config = config(&[upstream], DEAD_BROKER, "unused");
    config.rate_limit_per_second = NonZeroU32::new(5);
    config.rate_limit_burst = NonZeroU32::new(10);
    let gateway = TestGateway::spawn(config).await;

    // 30 at once from 127.0.0.1: the bucket of 10, then 429s (a few may pass as it refills).
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..30 {
        let response = gateway.get("/api/movies").await;
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .expect("Retry-After in whole seconds");
                assert!((1..=2).contains(&retry_after), "{retry_after}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "rate_limited");
                let message = body["message"].as_str().unwrap();
                assert!(
                    message.contains("127.0.0.1") && message.contains("5 per second"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!((10..=13).contains(&ok), "{ok} passed");
    assert_eq!(ok + limited, 30);

    // Health and readiness answer whatever the limit.
    for _ in 0..20 {
        assert_eq!(gateway.get("/health").await.status(), StatusCode::OK);
        assert_ne!(
            gateway.get("/ready").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    // Another client address has an allowance of its own.
    let other = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let response = other.get(gateway.url("/api/movies")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Half a second later, 127.0.0.1 may send about 2 more (5 per second).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gateway.get("/api/movies").await.status(), StatusCode::OK);
    gateway.stop().await;
}

#[tokio::test]
async fn without_a_limit_configured_nothing_is_limited() {
    let upstream = serve(echo_app("free")).await;
    let gateway = TestGateway::spawn(config(&[upstream], DEAD_BROKER, "unused")).await;
    for _ in 0..100 {
        assert_eq!(gateway.get("/api/movies").await.status(), StatusCode::OK);
    }
    gateway.stop().await;
}
