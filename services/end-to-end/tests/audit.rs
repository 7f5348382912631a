//! The audit of the original design, end to end: the three real binaries on loopback ports,
//! against the real PostgreSQL and RabbitMQ, driven only through the gateway as a user would.
//!
//! It needs `DATABASE_URL` (an administrative connection; fresh databases are created from it) and
//! `AMQP_URL`, as the README's test command sets them.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use end_to_end::audit::Gateway;
use end_to_end::{database_url, with_platform, Platform, Scratch};
use serde_json::json;
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

#[tokio::test(flavor = "multi_thread")]
async fn audit_of_the_original_design_through_the_gateway() -> Result<()> {
    with_platform("e2e", Duration::from_secs(10), run_audit).await
}

async fn run_audit(
    scratch: Scratch,
    mut platform: Platform,
    client: reqwest::Client,
) -> Result<()> {
    let gateway_url = platform.gateway_url.clone();
    let billing_db = database_url(&scratch.billing_db());

    // Inventory, as in section 5 of the original design: the steps the lab's audit runs too.
    let gateway = Gateway::new(client, &gateway_url);
    let tag = scratch.suffix();
    let movie = gateway.movie_until_update(tag).await?;
    gateway.delete_movie(movie.id).await?;

    // Billing: an order becomes a row.
    let mut db = PgConnection::connect(&billing_db).await?;
    let user = format!("usr_{}", scratch.suffix());
    gateway
        .post_order(&json!({"user_id": user, "number_of_items": 3, "total_amount": 99.97}))
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
        gateway
            .post_order(&json!({"user_id": user, "number_of_items": "2", "total_amount": amount}))
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
