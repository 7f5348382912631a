//! The committed Postman collection (`postman/`), run by newman against the three real binaries on
//! loopback, as the crud-master audit runs it: every endpoint and error case, then the resilience
//! flow with billing stopped, whose orders must all be stored once billing is back.
//!
//! Needs `newman` on the PATH (scripts/prerequisites installs it from npm), `DATABASE_URL` and
//! `AMQP_URL` as the README's test command sets them. Fails, never skips, when newman is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use end_to_end::{database_url, with_platform, Platform, Scratch};
use sqlx::{Connection, PgConnection};

fn collection() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../postman/streaming-platform.postman_collection.json")
}

/// Runs the given folders of the collection; fails with newman's report when a check fails.
fn newman(gateway: &str, tag: &str, folders: &[&str]) -> Result<()> {
    let mut command = Command::new("newman");
    command
        .arg("run")
        .arg(collection())
        .args(["--env-var", &format!("baseUrl={gateway}")])
        .args(["--env-var", &format!("runTag={tag}")])
        .args(["--reporters", "cli", "--disable-unicode", "--color", "off"]);
    for folder in folders {
        command.args(["--folder", folder]);
    }
    let output = command
        .output()
        .context("cannot run newman (npm install --global newman; scripts/prerequisites)")?;
    let report = String::from_utf8_lossy(&output.stdout);
    // The summary table: requests, test scripts, assertions, with their failures.
    let summary: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("requests") || line.contains("assertions"))
        .collect();
    println!("newman {folders:?}: {}", summary.join(" / "));
    if !output.status.success() {
        bail!(
            "newman {folders:?} failed:\n{report}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn rows(db: &mut PgConnection, user_id: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(db)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postman_collection_passes_against_the_platform() -> Result<()> {
    with_platform("postman", Duration::from_secs(10), run).await
}

async fn run(scratch: Scratch, mut platform: Platform, _client: reqwest::Client) -> Result<()> {
    let gateway = platform.gateway_url.clone();
    let tag = format!("newman-{}", scratch.suffix());

    newman(
        &gateway,
        &tag,
        &["health", "movies", "movie errors", "billing"],
    )?;

    // The resilience flow: billing stopped, orders still accepted, stored once it is back.
    platform.stop_billing()?;
    newman(&gateway, &tag, &["resilience"])?;
    platform.start_billing()?;
    let mut db = PgConnection::connect(&database_url(&scratch.billing_db())).await?;
    let resilience_user = format!("usr_resilience_{tag}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows(&mut db, &resilience_user).await.unwrap_or(0) < 3 {
        ensure!(
            Instant::now() < deadline,
            "the 3 orders sent while billing was stopped are not all stored after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The billing folder sent one order plainly and one twice with the same Idempotency-Key.
    let user = format!("usr_{tag}");
    let (resilience, keyed) = (
        rows(&mut db, &resilience_user).await?,
        rows(&mut db, &user).await?,
    );
    println!("rows: {resilience} of 3 sent while billing was stopped; {keyed} for 3 posts of which 2 share a key");
    ensure!(
        resilience == 3 && keyed == 2,
        "expected 3 and 2 rows, found {resilience} and {keyed}"
    );

    newman(&gateway, &tag, &["cleanup"])?;
    Ok(())
}
