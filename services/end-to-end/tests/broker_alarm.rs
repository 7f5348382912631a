//! The retrying client, end to end, through a real broker alarm: RabbitMQ's memory watermark is
//! set so low that the broker blocks every publisher (`rabbitmqctl set_vm_memory_high_watermark`),
//! the gateway answers 503 (at once once it knows it is blocked, with `Retry-After`, and `/ready`
//! says why), the alarm is cleared, the client retries with the same `Idempotency-Key`, and billing
//! stores exactly one row however many copies reached the queue.
//!
//! A test binary of its own: the alarm blocks every publisher of the local broker, so no other
//! test may run beside it (cargo runs test binaries one after the other). It needs `rabbitmqctl`
//! for the broker of `AMQP_URL` (the README's test command runs on that broker's machine).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use end_to_end::{database_url, with_platform, Platform, Scratch};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("cannot run rabbitmqctl (package rabbitmq-server, scripts/prerequisites)")?;
    ensure!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Puts the broker's memory watermark back as it was, even when the test fails.
struct Watermark {
    original: String,
}

impl Watermark {
    /// Raises the memory alarm: a watermark far below what the broker already uses.
    fn raise_alarm() -> Result<Self> {
        let original = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])?;
        ensure!(
            original.parse::<f64>().is_ok(),
            "unexpected watermark {original:?} (a fraction was expected)"
        );
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"])?;
        Ok(Self { original })
    }

    fn clear(&self) -> Result<()> {
        rabbitmqctl(&["set_vm_memory_high_watermark", &self.original]).map(drop)
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        if let Err(err) = self.clear() {
            eprintln!(
                "could not restore the memory watermark {}: {err:#}",
                self.original
            );
        }
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<String>,
    took: Duration,
}

async fn post_order(
    client: &reqwest::Client,
    gateway: &str,
    key: &str,
    user: &str,
) -> Result<Answer> {
    let started = Instant::now();
    let response = client
        .post(format!("{gateway}/api/billing"))
        .header("Idempotency-Key", key)
        .json(&json!({"user_id": user, "number_of_items": 2, "total_amount": "19.90"}))
        .send()
        .await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await?;
    Ok(Answer {
        status,
        body,
        retry_after,
        took: started.elapsed(),
    })
}

async fn rows(db: &mut PgConnection, user: &str) -> Result<(i64, i64)> {
    Ok(sqlx::query_as::<_, (i64, i64)>(
        "SELECT count(*), count(DISTINCT message_id) FROM orders WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(db)
    .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_key_after_a_broker_alarm_is_stored_once() -> Result<()> {
    with_platform("alarm", Duration::from_secs(20), drill).await
}

async fn drill(scratch: Scratch, platform: Platform, client: reqwest::Client) -> Result<()> {
    let gateway = platform.gateway_url.clone();
    let user = format!("usr_alarm_{}", scratch.suffix());
    let key = format!("order-{}", scratch.suffix());

    let alarm = Watermark::raise_alarm()?;
    // The first order meets the blocked broker: it waits out the publish timeout, or is refused
    // at once if the gateway already knows; either way never a 202.
    let first = post_order(&client, &gateway, &key, &user).await?;
    println!(
        "during the alarm: {} after {:?}: {}",
        first.status, first.took, first.body
    );
    ensure!(
        first.status == StatusCode::SERVICE_UNAVAILABLE,
        "an order while the broker blocks publishers: {} {}",
        first.status,
        first.body
    );
    // Once blocked, the gateway says so on /ready and refuses at once, with Retry-After.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let response = client.get(format!("{gateway}/ready")).send().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status == StatusCode::SERVICE_UNAVAILABLE
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains("blocking"))
        {
            break body;
        }
        ensure!(
            Instant::now() < deadline,
            "/ready never reported the block: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("/ready during the alarm: {ready}");
    let second = post_order(&client, &gateway, &key, &user).await?;
    ensure!(
        second.status == StatusCode::SERVICE_UNAVAILABLE
            && second.took < Duration::from_secs(1)
            && second.retry_after.is_some(),
        "a blocked broker must be a quick 503 with Retry-After: {} after {:?}, Retry-After {:?}: {}",
        second.status,
        second.took,
        second.retry_after,
        second.body
    );

    alarm.clear()?;
    drop(alarm);
    // The client retries with the same key until accepted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 2;
    let accepted = loop {
        let answer = post_order(&client, &gateway, &key, &user).await?;
        if answer.status == StatusCode::ACCEPTED {
            break answer;
        }
        ensure!(
            answer.status == StatusCode::SERVICE_UNAVAILABLE,
            "retry after the alarm: {} {}",
            answer.status,
            answer.body
        );
        refused += 1;
        ensure!(
            Instant::now() < deadline,
            "still refused 30 s after the alarm cleared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let id = accepted.body["id"].as_str().context("202 without id")?;

    // Every copy (the first, blocked publish may have been queued after all) has this id; billing
    // stores one row. Wait for the queue to drain, then count.
    let mut db = PgConnection::connect(&database_url(&scratch.billing_db())).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (count, _) = rows(&mut db, &user).await?;
        if count >= 1 {
            break;
        }
        ensure!(Instant::now() < deadline, "no row 20 s after the 202");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a late copy time to arrive and be deduplicated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (count, distinct) = rows(&mut db, &user).await?;
    let stored_id: Option<String> =
        sqlx::query_scalar("SELECT message_id::text FROM orders WHERE user_id = $1")
            .bind(&user)
            .fetch_optional(&mut db)
            .await?;
    println!(
        "requests: 1 during the alarm, 1 once blocked, {} after it cleared; answers: {refused} x 503, \
         1 x 202; rows: {count} ({distinct} distinct ids); lost {}, duplicated {}",
        refused - 2 + 1,
        i64::from(count == 0),
        (count - 1).max(0)
    );
    if count != 1 || stored_id.as_deref() != Some(id) {
        bail!("expected exactly one row with id {id}, found {count} ({stored_id:?})");
    }
    Ok(())
}
