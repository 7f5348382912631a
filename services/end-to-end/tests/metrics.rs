//! `GET /metrics` of the three real binaries, after real traffic: requests counted by route
//! template (never by raw path), the gateway's publishes and upstream latency, billing's rows, and
//! every service's build; the gateway's public port does not expose them.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use end_to_end::{with_platform, with_platform_env, Platform, Scratch};
use reqwest::StatusCode;
use serde_json::json;

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

async fn metrics(client: &reqwest::Client, url: &str) -> Result<String> {
    let response = client.get(url).send().await?;
    ensure!(
        response.status() == StatusCode::OK,
        "{url}: {}",
        response.status()
    );
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Ok(response.text().await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_counts_its_requests_by_route_and_its_own_work() -> Result<()> {
    with_platform("metrics", Duration::from_secs(10), run).await
}

async fn run(scratch: Scratch, platform: Platform, client: reqwest::Client) -> Result<()> {
    let gateway = &platform.gateway_url;
    for id in [999_001, 999_002, 999_003] {
        let response = client
            .get(format!("{gateway}/api/movies/{id}"))
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::NOT_FOUND,
            "{}",
            response.status()
        );
    }
    // A method of the client's own invention is forwarded like any other, and counted as other.
    let invented = reqwest::Method::from_bytes(b"PURGE999002")?;
    client
        .request(invented, format!("{gateway}/api/movies/999004"))
        .send()
        .await?;
    let user = format!("usr_{}", scratch.suffix());
    let response = client
        .post(format!("{gateway}/api/billing"))
        .json(&json!({"user_id": user, "number_of_items": 1, "total_amount": 9.99}))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "{}",
        response.status()
    );

    // Not on the public port.
    let public = client.get(format!("{gateway}/metrics")).send().await?;
    ensure!(
        public.status() == StatusCode::NOT_FOUND,
        "{}",
        public.status()
    );

    let text = metrics(&client, &platform.gateway_metrics_url).await?;
    let proxied = sample(
        &text,
        "http_requests_total",
        &[
            "route=\"/api/movies/{*rest}\"",
            "method=\"GET\"",
            "status=\"404\"",
        ],
    );
    ensure!(
        proxied == Some(3.0),
        "gateway movie requests: {proxied:?}\n{text}"
    );
    ensure!(!text.contains("999001"), "a raw path is a label:\n{text}");
    ensure!(
        !text.contains("PURGE999002"),
        "an invented method is a label:\n{text}"
    );
    ensure!(
        sample(
            &text,
            "http_requests_total",
            &["route=\"/api/movies/{*rest}\"", "method=\"other\""]
        ) == Some(1.0),
        "the invented method is counted as other:\n{text}"
    );
    let confirmed = sample(&text, "gateway_publishes_total", &["outcome=\"confirmed\""]);
    ensure!(
        confirmed == Some(1.0),
        "confirmed publishes: {confirmed:?}\n{text}"
    );
    let upstream = sample(
        &text,
        "gateway_upstream_duration_seconds_count",
        &[&platform.inventory_url],
    );
    ensure!(
        upstream == Some(4.0),
        "upstream answers: {upstream:?}\n{text}"
    );
    ensure!(
        sample(&text, "build_info", &["service=\"gateway\""]) == Some(1.0),
        "{text}"
    );

    let text = metrics(&client, &format!("{}/metrics", platform.inventory_url)).await?;
    let by_id = sample(
        &text,
        "http_requests_total",
        &["route=\"/api/movies/{id}\"", "status=\"404\""],
    );
    ensure!(by_id == Some(3.0), "inventory requests: {by_id:?}\n{text}");
    ensure!(
        sample(
            &text,
            "http_request_duration_seconds_bucket",
            &["route=\"/api/movies/{id}\"", "le=\"+Inf\""]
        ) == Some(3.0),
        "a latency histogram:\n{text}"
    );
    ensure!(
        sample(&text, "build_info", &["service=\"inventory\""]) == Some(1.0),
        "{text}"
    );

    // Billing's figures, once the order is a row.
    let billing = platform.billing_ready_url.replace("/ready", "/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(&client, &billing).await?;
        if sample(&text, "billing_rows_inserted_total", &[]) == Some(1.0) {
            ensure!(
                sample(&text, "billing_messages_consumed_total", &[]) == Some(1.0),
                "{text}"
            );
            ensure!(
                sample(&text, "build_info", &["service=\"billing\""]) == Some(1.0),
                "{text}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("billing never reported its row:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The gateway with its rate limit on: the requests it refuses are counted under their route, as
/// are health's, which is never limited.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_counts_the_requests_its_rate_limit_refuses() -> Result<()> {
    let limit = [
        ("RATE_LIMIT_PER_SECOND", "1".to_owned()),
        ("RATE_LIMIT_BURST", "2".to_owned()),
    ];
    with_platform_env(
        "metrics_limited",
        Duration::from_secs(10),
        &limit,
        run_limited,
    )
    .await
}

async fn run_limited(_: Scratch, platform: Platform, client: reqwest::Client) -> Result<()> {
    let gateway = &platform.gateway_url;
    let (mut missing, mut refused) = (0, 0);
    for _ in 0..6 {
        let response = client
            .get(format!("{gateway}/api/movies/999001"))
            .send()
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => missing += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => bail!("unexpected {other}"),
        }
    }
    ensure!(refused >= 3, "{missing} answered, {refused} refused");
    for _ in 0..3 {
        let health = client.get(format!("{gateway}/health")).send().await?;
        ensure!(health.status() == StatusCode::OK, "{}", health.status());
    }

    let text = metrics(&client, &platform.gateway_metrics_url).await?;
    let route = "route=\"/api/movies/{*rest}\"";
    let counted = |status: &str| {
        sample(
            &text,
            "http_requests_total",
            &[route, "method=\"GET\"", &format!("status=\"{status}\"")],
        )
    };
    ensure!(
        counted("429") == Some(f64::from(refused)) && counted("404") == Some(f64::from(missing)),
        "{missing} answered 404 and {refused} refused, counted {:?} and {:?}:\n{text}",
        counted("404"),
        counted("429")
    );
    let health = sample(
        &text,
        "http_requests_total",
        &["route=\"/health\"", "status=\"200\""],
    );
    ensure!(
        health.is_some_and(|count| count >= 3.0),
        "health requests: {health:?}\n{text}"
    );
    Ok(())
}
