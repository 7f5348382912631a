//! The audit of the original design, end to end: the three real binaries on loopback ports,
//! against the real PostgreSQL and RabbitMQ, driven only through the gateway as a user would.
//!
//! It needs `DATABASE_URL` (an administrative connection; fresh databases are created from it) and
//! `AMQP_URL`, as the README's test command sets them.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use end_to_end::{database_url, with_platform, Platform, Scratch};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

/// How long a row may take to appear once its order is accepted.
const ROW_DEADLINE: Duration = Duration::from_secs(20);

async fn order_count(db: &mut PgConnection, user_id: &str) -> Result<i64> {
    // The table may not exist yet while billing starts for the first time.
    let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(db)
        .await
        .unwrap_or(0);
    Ok(count)
}

async fn wait_for_orders(db: &mut PgConnection, user_id: &str, expected: i64) -> Result<()> {
    let deadline = Instant::now() + ROW_DEADLINE;
    loop {
        let count = order_count(db, user_id).await?;
        if count == expected {
            return Ok(());
        }
        ensure!(
            count < expected,
            "{count} rows for {user_id}, expected {expected}"
        );
        if Instant::now() > deadline {
            bail!("{count} rows for {user_id} after {ROW_DEADLINE:?}, expected {expected}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_order(client: &reqwest::Client, gateway: &str, body: Value) -> Result<String> {
    let response = client
        .post(format!("{gateway}/api/billing"))
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(
        status == StatusCode::ACCEPTED,
        "POST /api/billing: {status} {body}"
    );
    let id = body["id"].as_str().context("202 body has no id")?;
    Ok(id.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_of_the_original_design_through_the_gateway() -> Result<()> {
    with_platform("e2e", Duration::from_secs(10), run_audit).await
}

async fn run_audit(
    scratch: Scratch,
    mut platform: Platform,
    client: reqwest::Client,
) -> Result<()> {
    let gateway = platform.gateway_url.clone();
    let billing_db = database_url(&scratch.billing_db());

    // Inventory, as in section 5 of the original design.
    let created = client
        .post(format!("{gateway}/api/movies"))
        .json(&json!({"title": "The Matrix", "description": "A hacker learns the nature of his reality."}))
        .send()
        .await?;
    ensure!(
        created.status() == StatusCode::CREATED,
        "create: {}",
        created.status()
    );
    let movie: Value = created.json().await?;
    let id = movie["id"]
        .as_i64()
        .context("created movie has an integer id")?;
    ensure!(movie["title"] == "The Matrix", "created: {movie}");

    let list: Value = client
        .get(format!("{gateway}/api/movies"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        list.as_array()
            .is_some_and(|movies| movies.iter().any(|m| m["id"] == id)),
        "list lacks the movie: {list}"
    );

    let found: Value = client
        .get(format!("{gateway}/api/movies?title=matrix"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        found
            .as_array()
            .is_some_and(|m| m.len() == 1 && m[0]["id"] == id),
        "search by title: {found}"
    );
    let none: Value = client
        .get(format!("{gateway}/api/movies?title=zzz-no-such"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        none.as_array().is_some_and(Vec::is_empty),
        "search miss: {none}"
    );

    let got = client
        .get(format!("{gateway}/api/movies/{id}"))
        .send()
        .await?;
    ensure!(got.status() == StatusCode::OK, "get: {}", got.status());

    let updated = client
        .put(format!("{gateway}/api/movies/{id}"))
        .json(&json!({"title": "The Matrix Reloaded"}))
        .send()
        .await?;
    ensure!(
        updated.status() == StatusCode::OK,
        "update: {}",
        updated.status()
    );
    let updated: Value = updated.json().await?;
    ensure!(
        updated["title"] == "The Matrix Reloaded",
        "update: {updated}"
    );
    ensure!(
        updated["description"] == movie["description"],
        "a partial update must keep the description: {updated}"
    );

    let deleted = client
        .delete(format!("{gateway}/api/movies/{id}"))
        .send()
        .await?;
    ensure!(
        deleted.status().is_success(),
        "delete: {}",
        deleted.status()
    );
    let gone = client
        .get(format!("{gateway}/api/movies/{id}"))
        .send()
        .await?;
    ensure!(
        gone.status() == StatusCode::NOT_FOUND,
        "after delete: {}",
        gone.status()
    );
    let gone: Value = gone.json().await?;
    ensure!(
        gone["error"].is_string(),
        "404 has the JSON error shape: {gone}"
    );

    // Billing: an order becomes a row.
    let mut db = PgConnection::connect(&billing_db).await?;
    let user = format!("usr_{}", scratch.suffix());
    post_order(
        &client,
        &gateway,
        json!({"user_id": user, "number_of_items": 3, "total_amount": 99.97}),
    )
    .await?;
    wait_for_orders(&mut db, &user, 1).await?;
    let amount: String =
        sqlx::query_scalar("SELECT total_amount::text FROM orders WHERE user_id = $1")
            .bind(&user)
            .fetch_one(&mut db)
            .await?;
    ensure!(amount == "99.97", "stored amount {amount}");

    // The resilience test: billing stopped, orders still accepted, nothing lost.
    platform.stop_billing()?;
    for amount in ["20", "99", "250"] {
        post_order(
            &client,
            &gateway,
            json!({"user_id": user, "number_of_items": "2", "total_amount": amount}),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        order_count(&mut db, &user).await? == 1,
        "rows appeared while billing was stopped"
    );

    platform.start_billing()?;
    wait_for_orders(&mut db, &user, 4).await?;
    Ok(())
}
