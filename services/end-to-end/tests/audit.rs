//! The audit of the original design, end to end: the three real binaries on loopback ports,
//! against the real PostgreSQL and RabbitMQ, driven only through the gateway as a user would.
//!
//! It needs `DATABASE_URL` (an administrative connection; fresh databases are created from it) and
//! `AMQP_URL`, as the README's test command sets them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

/// How long a row may take to appear once its order is accepted.
const ROW_DEADLINE: Duration = Duration::from_secs(20);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn admin_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/postgres",
    )
}

fn amqp_url() -> String {
    env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// The URL of database `name` on the same server as the administrative connection.
fn database_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds the three binaries (a no-op when fresh) and returns the folder holding them.
fn service_binaries() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "gateway", "-p", "inventory", "-p", "billing"])
        .status()
        .context("running cargo build for the service binaries")?;
    ensure!(status.success(), "cargo build of the services failed");
    // This test runs from target/<profile>/deps/; the binaries sit in target/<profile>/.
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable has no target folder")?;
    Ok(dir.to_path_buf())
}

/// A service process, killed when dropped so a failing test leaves nothing behind.
struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    fn start(
        bin_dir: &std::path::Path,
        name: &'static str,
        env: &[(&str, String)],
    ) -> Result<Self> {
        let mut command = Command::new(bin_dir.join(name));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }

    /// Sends SIGTERM, as `systemctl stop` does, and expects a clean exit 0.
    fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "{} exited with {status} on SIGTERM",
                    self.name
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within 15 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_healthy(client: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status() == StatusCode::OK {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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

/// Databases and queue private to one run, removed at the end whatever happened.
struct Scratch {
    suffix: String,
}

impl Scratch {
    async fn create() -> Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut admin = PgConnection::connect(&admin_url()).await?;
        for db in [
            format!("e2e_movies_{suffix}"),
            format!("e2e_billing_{suffix}"),
        ] {
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut admin)
                .await?;
        }
        Ok(Self { suffix })
    }

    fn queue(&self) -> String {
        format!("e2e_billing_queue_{}", self.suffix)
    }

    async fn drop_all(&self) -> Result<()> {
        let mut admin = PgConnection::connect(&admin_url()).await?;
        for db in [
            format!("e2e_movies_{}", self.suffix),
            format!("e2e_billing_{}", self.suffix),
        ] {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
        }
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for queue in [self.queue(), service_common_dead_letter(&self.queue())] {
            let _ = channel
                .queue_delete(&queue, lapin::options::QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "bye").await;
        Ok(())
    }
}

/// Mirrors `service_common::dead_letter_queue_name` without depending on the services' crates.
fn service_common_dead_letter(queue: &str) -> String {
    format!("{queue}.dead-letter")
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_of_the_original_design_through_the_gateway() -> Result<()> {
    let scratch = Scratch::create().await?;
    let outcome = run_audit(&scratch).await;
    scratch.drop_all().await?;
    outcome
}

async fn run_audit(scratch: &Scratch) -> Result<()> {
    let bin_dir = service_binaries()?;
    let (gateway_port, inventory_port, billing_health_port) =
        (free_port()?, free_port()?, free_port()?);
    let movies_db = database_url(&format!("e2e_movies_{}", scratch.suffix));
    let billing_db = database_url(&format!("e2e_billing_{}", scratch.suffix));
    let queue = scratch.queue();

    let _inventory = Service::start(
        &bin_dir,
        "inventory",
        &[
            ("DATABASE_URL", movies_db),
            ("LISTEN_ADDR", format!("127.0.0.1:{inventory_port}")),
        ],
    )?;
    let billing_env = [
        ("DATABASE_URL", billing_db.clone()),
        ("AMQP_URL", amqp_url()),
        ("BILLING_QUEUE", queue.clone()),
        (
            "HEALTH_LISTEN_ADDR",
            format!("127.0.0.1:{billing_health_port}"),
        ),
    ];
    let billing = Service::start(&bin_dir, "billing", &billing_env)?;
    let _gateway = Service::start(
        &bin_dir,
        "gateway",
        &[
            ("LISTEN_ADDR", format!("127.0.0.1:{gateway_port}")),
            (
                "INVENTORY_URL",
                format!("http://127.0.0.1:{inventory_port}"),
            ),
            ("AMQP_URL", amqp_url()),
            ("BILLING_QUEUE", queue.clone()),
        ],
    )?;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let billing_health = format!("http://127.0.0.1:{billing_health_port}/ready");
    wait_healthy(&client, &format!("http://127.0.0.1:{inventory_port}/ready")).await?;
    wait_healthy(&client, &billing_health).await?;
    wait_healthy(&client, &format!("{gateway}/ready")).await?;

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
    let user = format!("usr_{}", scratch.suffix);
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
    billing.stop()?;
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

    let _billing = Service::start(&bin_dir, "billing", &billing_env)?;
    wait_for_orders(&mut db, &user, 4).await?;
    Ok(())
}
