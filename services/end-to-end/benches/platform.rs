//! The platform's speed and memory figures: the three release binaries on loopback ports, loaded
//! by this process, with a reference measured in the same run for each ratio.
//!
//! It prints figures and asserts none of them: a slow or noisy machine changes the numbers, never
//! the outcome. It fails only on functional errors (a non-2xx answer, an order that never becomes
//! a row), because then the figures would describe something other than the platform working.
//!
//! It needs `DATABASE_URL` (an administrative connection; scratch databases are created from it)
//! and `AMQP_URL`, as `scripts/bench` sets them. All load goes to 127.0.0.1 and is bounded both in
//! count and in time.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

/// Concurrent clients of the closed-loop HTTP loads.
const CLIENTS: usize = 64;
/// Most requests of one HTTP load; the load also ends at `LOAD_TIME_LIMIT`, whichever comes first.
const PROXY_REQUESTS: usize = 20_000;
/// Most orders posted through the gateway; each one is a broker round trip with a confirm.
const PUBLISH_REQUESTS: usize = 5_000;
/// Time bound of each HTTP load.
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(5);
/// The direct and proxied loads alternate in this many rounds, so that neither is measured only
/// on a colder or warmer platform than the other.
const PROXY_ROUNDS: u32 = 4;
/// Requests sent before each measured load, so connection set-up and cold caches are not measured.
const WARM_UP_REQUESTS: usize = 500;
/// Orders queued while billing is stopped, then drained.
const BACKLOG_ORDERS: usize = 20_000;
/// Time bound of the naive insert loop; its rate is computed from the rows it managed.
const NAIVE_TIME_LIMIT: Duration = Duration::from_secs(15);
/// Movies the proxy loads read, in turn.
const MOVIES: usize = 16;
/// How long accepted orders may take to become rows before the run is declared broken.
const ROW_DEADLINE: Duration = Duration::from_secs(60);

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

/// Progress goes to stderr so that stdout holds only the table.
fn progress(what: &str) {
    eprintln!("bench: {what}");
}

/// Builds the three release binaries (a no-op when fresh) and returns the folder holding them.
fn service_binaries() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "gateway",
            "-p",
            "inventory",
            "-p",
            "billing",
        ])
        .status()
        .context("running cargo build for the service binaries")?;
    ensure!(status.success(), "cargo build of the services failed");
    // A bench runs from target/release/deps/; the binaries sit in target/release/.
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("bench executable has no target folder")?;
    Ok(dir.to_path_buf())
}

/// A service process, killed when dropped so a failing run leaves nothing behind.
struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    fn start(bin_dir: &Path, name: &'static str, env: &[(&str, String)]) -> Result<Self> {
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

    /// The peak resident set size of the process so far, in MiB.
    fn peak_rss_mib(&self) -> Result<f64> {
        peak_rss_mib(&format!("/proc/{}/status", self.child.id()))
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

/// `VmHWM` of a `/proc/<pid>/status` file, in MiB.
fn peak_rss_mib(status_file: &str) -> Result<f64> {
    let status =
        std::fs::read_to_string(status_file).with_context(|| format!("reading {status_file}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in {status_file}"))?;
    Ok(kib / 1024.0)
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows in `orders`; zero while billing has not created the table yet.
async fn order_count(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
        .fetch_one(db)
        .await
        .unwrap_or(0)
}

/// Waits until `orders` holds exactly `expected` rows; more, or fewer by the deadline, is an error.
async fn wait_for_orders(db: &mut PgConnection, expected: i64) -> Result<()> {
    let deadline = Instant::now() + ROW_DEADLINE;
    loop {
        let count = order_count(db).await;
        if count == expected {
            return Ok(());
        }
        ensure!(count < expected, "{count} order rows, expected {expected}");
        if Instant::now() > deadline {
            bail!("{count} order rows after {ROW_DEADLINE:?}, expected {expected}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request of a load: what to send, given the request's sequence number.
type MakeRequest = Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// What one closed-loop load measured.
#[derive(Debug)]
struct LoadFigures {
    requests: usize,
    elapsed: Duration,
    /// Every request's latency, sorted.
    latencies: Vec<Duration>,
}

impl LoadFigures {
    /// One load's figures from several rounds of it.
    fn merge(rounds: Vec<LoadFigures>) -> Self {
        let mut latencies: Vec<Duration> =
            rounds.iter().flat_map(|r| r.latencies.clone()).collect();
        latencies.sort_unstable();
        Self {
            requests: latencies.len(),
            elapsed: rounds.iter().map(|r| r.elapsed).sum(),
            latencies,
        }
    }

    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency below which `fraction` of the requests completed, in milliseconds.
    fn percentile_ms(&self, fraction: f64) -> f64 {
        let rank = ((fraction * self.latencies.len() as f64).ceil() as usize).max(1);
        self.latencies
            .get(rank - 1)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

/// `CLIENTS` clients, each sending its next request as soon as the previous answer is read, until
/// `count` requests are sent or `limit` has passed. Any non-2xx answer fails the load.
async fn closed_loop(
    client: &reqwest::Client,
    count: usize,
    limit: Duration,
    make: MakeRequest,
) -> Result<LoadFigures> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (client, next, make) = (client.clone(), next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                let response = make(&client, n).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                latencies.push(sent.elapsed());
                ensure!(
                    status.is_success(),
                    "request {n}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(LoadFigures {
        requests: latencies.len(),
        elapsed,
        latencies,
    })
}

/// A warm-up, then the measured load. Returns how many warm-up requests were sent, and the figures.
async fn measured_load(
    client: &reqwest::Client,
    count: usize,
    make: MakeRequest,
) -> Result<(usize, LoadFigures)> {
    let warm_up = closed_loop(client, WARM_UP_REQUESTS, LOAD_TIME_LIMIT, make.clone()).await?;
    Ok((
        warm_up.requests,
        closed_loop(client, count, LOAD_TIME_LIMIT, make).await?,
    ))
}

/// Databases and queue private to one run, removed at the end whatever happened.
struct Scratch {
    suffix: String,
}

impl Scratch {
    async fn create() -> Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let scratch = Self { suffix };
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .context("connecting to PostgreSQL with DATABASE_URL")?;
        for db in scratch.databases() {
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut admin)
                .await?;
        }
        Ok(scratch)
    }

    fn databases(&self) -> [String; 2] {
        [self.movies_db(), self.billing_db()]
    }

    fn movies_db(&self) -> String {
        format!("bench_movies_{}", self.suffix)
    }

    fn billing_db(&self) -> String {
        format!("bench_billing_{}", self.suffix)
    }

    fn queue(&self) -> String {
        format!("bench_billing_queue_{}", self.suffix)
    }

    async fn drop_all(&self) -> Result<()> {
        let mut admin = PgConnection::connect(&admin_url()).await?;
        for db in self.databases() {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
        }
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        // Mirrors `service_common::dead_letter_queue_name` without depending on the services.
        for queue in [self.queue(), format!("{}.dead-letter", self.queue())] {
            let _ = channel
                .queue_delete(&queue, lapin::options::QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "bye").await;
        Ok(())
    }
}

/// Publishes `count` orders straight to `queue` as the gateway does (persistent, JSON, a fresh
/// message id each) and waits for every confirm.
async fn publish_backlog(queue: &str, count: usize) -> Result<()> {
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ with AMQP_URL")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // The same declaration as gateway and billing (durable, no arguments), so they agree.
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue, options, FieldTable::default())
        .await?;
    let body = serde_json::to_vec(
        &json!({"user_id": "bench_backlog", "number_of_items": 2, "total_amount": "19.99"}),
    )?;
    // Publishes are pipelined a chunk at a time, so the broker is never asked to hold an unbounded
    // number of unconfirmed messages for us.
    let mut sent = 0;
    while sent < count {
        let chunk = (count - sent).min(1_000);
        let mut confirms = Vec::with_capacity(chunk);
        for _ in 0..chunk {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(uuid::Uuid::new_v4().to_string().into());
            confirms.push(
                channel
                    .basic_publish("", queue, BasicPublishOptions::default(), &body, properties)
                    .await?,
            );
        }
        for confirm in confirms {
            ensure!(
                confirm.await?.is_ack(),
                "the broker refused a backlog message"
            );
        }
        sent += chunk;
    }
    let _ = connection.close(200, "bye").await;
    Ok(())
}

/// The reference for the drain: the same rows inserted one per transaction, in a loop, which is
/// what a consumer without batching does. Returns the rows inserted and the time they took.
async fn naive_inserts(database: &str, count: usize) -> Result<(usize, Duration)> {
    let mut db = PgConnection::connect(&database_url(database)).await?;
    // The shape of billing's `orders`, so each row costs what an order row costs.
    sqlx::query(
        "CREATE TABLE naive_orders (
             id              BIGSERIAL      PRIMARY KEY,
             message_id      UUID           UNIQUE,
             user_id         VARCHAR(255)   NOT NULL,
             number_of_items INTEGER        NOT NULL CHECK (number_of_items > 0),
             total_amount    NUMERIC(14, 2) NOT NULL CHECK (total_amount >= 0),
             created_at      TIMESTAMPTZ    NOT NULL DEFAULT now()
         )",
    )
    .execute(&mut db)
    .await?;
    let start = Instant::now();
    let mut inserted = 0;
    while inserted < count && start.elapsed() < NAIVE_TIME_LIMIT {
        // Outside an explicit transaction, each statement is its own transaction and commit.
        sqlx::query(
            "INSERT INTO naive_orders (message_id, user_id, number_of_items, total_amount) \
             VALUES ($1, $2, $3, $4::numeric) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4())
        .bind("bench_naive")
        .bind(2_i32)
        .bind("19.99")
        .execute(&mut db)
        .await?;
        inserted += 1;
    }
    let elapsed = start.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM naive_orders")
        .fetch_one(&mut db)
        .await?;
    ensure!(
        stored == inserted as i64,
        "{stored} naive rows, expected {inserted}"
    );
    Ok((inserted, elapsed))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let scratch = Scratch::create().await?;
    let outcome = run(&scratch).await;
    let cleaned = scratch.drop_all().await;
    outcome?;
    cleaned.context("removing the scratch databases and queues")
}

async fn run(scratch: &Scratch) -> Result<()> {
    let bin_dir = service_binaries()?;
    let (gateway_port, inventory_port, billing_health_port) =
        (free_port()?, free_port()?, free_port()?);
    let billing_db = database_url(&scratch.billing_db());
    let queue = scratch.queue();

    progress("starting inventory, billing and gateway (release builds)");
    let inventory = Service::start(
        &bin_dir,
        "inventory",
        &[
            ("DATABASE_URL", database_url(&scratch.movies_db())),
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
    let gateway = Service::start(
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
    let direct = format!("http://127.0.0.1:{inventory_port}");
    let through_gateway = format!("http://127.0.0.1:{gateway_port}");
    let billing_ready = format!("http://127.0.0.1:{billing_health_port}/ready");
    wait_ready(&client, &format!("{direct}/ready")).await?;
    wait_ready(&client, &billing_ready).await?;
    wait_ready(&client, &format!("{through_gateway}/ready")).await?;

    let mut ids = Vec::with_capacity(MOVIES);
    for n in 0..MOVIES {
        let created = client
            .post(format!("{direct}/api/movies"))
            .json(&json!({"title": format!("Bench movie {n}"), "description": "Read under load."}))
            .send()
            .await?;
        ensure!(
            created.status().is_success(),
            "creating a movie: {}",
            created.status()
        );
        let movie: Value = created.json().await?;
        ids.push(
            movie["id"]
                .as_i64()
                .context("created movie has an integer id")?,
        );
    }
    let ids = Arc::new(ids);
    let get_movie = |base: String| -> MakeRequest {
        let ids = ids.clone();
        Arc::new(move |client: &reqwest::Client, n: usize| {
            client.get(format!("{base}/api/movies/{}", ids[n % ids.len()]))
        })
    };

    progress("GET /api/movies/{id}, straight to inventory and through the gateway in turn");
    let round_requests = PROXY_REQUESTS / PROXY_ROUNDS as usize;
    let round_limit = LOAD_TIME_LIMIT / PROXY_ROUNDS;
    closed_loop(
        &client,
        WARM_UP_REQUESTS,
        LOAD_TIME_LIMIT,
        get_movie(direct.clone()),
    )
    .await?;
    closed_loop(
        &client,
        WARM_UP_REQUESTS,
        LOAD_TIME_LIMIT,
        get_movie(through_gateway.clone()),
    )
    .await?;
    let (mut direct_rounds, mut proxied_rounds) = (Vec::new(), Vec::new());
    for _ in 0..PROXY_ROUNDS {
        direct_rounds.push(
            closed_loop(
                &client,
                round_requests,
                round_limit,
                get_movie(direct.clone()),
            )
            .await?,
        );
        proxied_rounds.push(
            closed_loop(
                &client,
                round_requests,
                round_limit,
                get_movie(through_gateway.clone()),
            )
            .await?,
        );
    }
    let direct_load = LoadFigures::merge(direct_rounds);
    let proxied_load = LoadFigures::merge(proxied_rounds);

    progress("POST /api/billing through the gateway");
    let order =
        Arc::new(json!({"user_id": "bench_publish", "number_of_items": 1, "total_amount": 9.99}));
    let billing_url = format!("{through_gateway}/api/billing");
    let post_order: MakeRequest =
        Arc::new(move |client: &reqwest::Client, _| client.post(&billing_url).json(order.as_ref()));
    let (warm_up, publish_load) = measured_load(&client, PUBLISH_REQUESTS, post_order).await?;
    // Every accepted order must become a row, warm-up included.
    let accepted = (warm_up + publish_load.requests) as i64;
    let mut db = PgConnection::connect(&billing_db).await?;
    wait_for_orders(&mut db, accepted).await?;

    progress("billing stopped; queueing the backlog");
    billing.stop()?;
    publish_backlog(&queue, BACKLOG_ORDERS).await?;
    progress("billing started; draining the backlog");
    let drain_start = Instant::now();
    let billing = Service::start(&bin_dir, "billing", &billing_env)?;
    wait_for_orders(&mut db, accepted + BACKLOG_ORDERS as i64).await?;
    let drain = drain_start.elapsed();

    // Read before the naive loop, which loads PostgreSQL, not the services.
    let memory = [
        ("gateway", gateway.peak_rss_mib()?),
        ("inventory", inventory.peak_rss_mib()?),
        ("billing (drain)", billing.peak_rss_mib()?),
    ];

    progress("reference: naive one-row-per-transaction inserts");
    let (naive_rows, naive_time) = naive_inserts(&scratch.billing_db(), BACKLOG_ORDERS).await?;
    let bench_rss = peak_rss_mib("/proc/self/status")?;

    print_report(&Report {
        direct: &direct_load,
        proxied: &proxied_load,
        publish: &publish_load,
        drain,
        naive_rows,
        naive_time,
        memory: &memory,
        bench_rss,
    });
    Ok(())
}

/// Everything the table shows.
#[derive(Debug)]
struct Report<'a> {
    direct: &'a LoadFigures,
    proxied: &'a LoadFigures,
    publish: &'a LoadFigures,
    drain: Duration,
    naive_rows: usize,
    naive_time: Duration,
    memory: &'a [(&'static str, f64)],
    bench_rss: f64,
}

fn print_report(r: &Report<'_>) {
    let load_row = |name: &str, f: &LoadFigures| {
        println!(
            "{name:<36} {:>8} {:>10.0} {:>9.2} {:>9.2}",
            f.requests,
            f.per_second(),
            f.percentile_ms(0.50),
            f.percentile_ms(0.99)
        );
    };
    println!();
    println!("platform bench: release binaries on 127.0.0.1, {CLIENTS} closed-loop clients");
    println!();
    println!(
        "{:<36} {:>8} {:>10} {:>9} {:>9}",
        "load", "requests", "req/s", "p50 ms", "p99 ms"
    );
    load_row("GET /api/movies/{id} direct", r.direct);
    load_row("GET /api/movies/{id} via gateway", r.proxied);
    println!(
        "{:<36} {:>8} {:>9.2}x {:>8.2}x {:>8.2}x",
        "  ratio gateway/direct",
        "",
        r.proxied.per_second() / r.direct.per_second(),
        r.proxied.percentile_ms(0.50) / r.direct.percentile_ms(0.50),
        r.proxied.percentile_ms(0.99) / r.direct.percentile_ms(0.99),
    );
    load_row("POST /api/billing (confirmed)", r.publish);
    println!();
    let drain_rate = BACKLOG_ORDERS as f64 / r.drain.as_secs_f64();
    let naive_rate = r.naive_rows as f64 / r.naive_time.as_secs_f64();
    println!(
        "{:<36} {:>8} {:>10} {:>9}",
        "backlog", "rows", "rows/s", "seconds"
    );
    println!(
        "{:<36} {:>8} {:>10.0} {:>9.2}",
        "billing drain (from process start)",
        BACKLOG_ORDERS,
        drain_rate,
        r.drain.as_secs_f64()
    );
    println!(
        "{:<36} {:>8} {:>10.0} {:>9.2}",
        format!("naive, 1 row/commit, <= {} s", NAIVE_TIME_LIMIT.as_secs()),
        r.naive_rows,
        naive_rate,
        r.naive_time.as_secs_f64()
    );
    println!(
        "{:<36} {:>8} {:>9.2}x",
        "  ratio billing/naive",
        "",
        drain_rate / naive_rate
    );
    println!();
    println!("{:<36} {:>8}", "peak RSS (VmHWM)", "MiB");
    for (name, mib) in r.memory {
        println!("{name:<36} {mib:>8.1}");
    }
    println!("{:<36} {:>8.1}", "bench process (reference)", r.bench_rss);
}
