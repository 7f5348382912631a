//! `load`: a steady, bounded load of movie reads and orders through a gateway, counted. A drill
//! (`scripts/ha-e2e`) runs it while it breaks machines, then checks every accepted order against
//! the rows billing stored.
//!
//!   load --gateway http://10.77.0.11:8080 --seconds 60 --rate 100 --marker step1 --accepted FILE
//!
//! Half the requests are `GET /api/movies`, half `POST /api/billing`, each order with its own
//! marker as `user_id` and as `Idempotency-Key`. With `--created FILE2`, a third are movie writes
//! instead (`POST /api/movies` titled with their own marker), and FILE2 gets the marker of every
//! movie answered 201. Nothing is retried: every answer is counted by kind. FILE gets the marker
//! of every order answered 202, one per line; stdout gets one JSON object with the counts and the
//! first and last failure, in seconds since the start (also of the writes alone: movie creations
//! and orders).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(
    name = "load",
    about = "A bounded load of movie reads and orders, counted."
)]
struct Args {
    /// The gateway's base URL.
    #[arg(long)]
    gateway: String,
    /// How long the load lasts.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Requests per second, all kinds together (at most 2000).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Prefix of every order's marker.
    #[arg(long)]
    marker: String,
    /// Where the markers of the orders answered 202 go.
    #[arg(long)]
    accepted: PathBuf,
    /// Also write movies, a third of the requests, and put the marker of each created (201) here.
    #[arg(long)]
    created: Option<PathBuf>,
    /// How long one request may take, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

/// The requests of one kind: how many were sent, answered as expected, and failed by kind.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    failures: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Counts {
    movies: Tally,
    orders: Tally,
    writes: Tally,
    accepted: Vec<String>,
    created: Vec<String>,
    first_failure: Option<f64>,
    last_failure: Option<f64>,
    first_write_failure: Option<f64>,
    last_write_failure: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Order,
    MovieWrite,
}

fn failure_kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else {
        "connection".into()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=2000).contains(&args.rate),
        "--rate must be 1 to 2000 requests per second"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    // Never more than this many requests open: a stalled platform slows the load, not the box.
    let open = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    let total = args.seconds * u64::from(args.rate);
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.rate);
    let mut tasks = Vec::new();
    let writes = args.created.is_some();
    for n in 0..total {
        ticks.tick().await;
        let permit = open.clone().acquire_owned().await?;
        let (client, counts, gateway) = (client.clone(), counts.clone(), args.gateway.clone());
        let marker = format!("{}-{n}", args.marker);
        let kind = match (n % 3, writes) {
            (_, false) if n % 2 == 1 => Kind::Order,
            (_, false) => Kind::Read,
            (0, true) => Kind::Read,
            (1, true) => Kind::Order,
            _ => Kind::MovieWrite,
        };
        tasks.push(tokio::spawn(async move {
            let request = match kind {
                Kind::Order => client
                    .post(format!("{gateway}/api/billing"))
                    .header("Idempotency-Key", &marker)
                    .json(
                        &json!({"user_id": marker, "number_of_items": 1, "total_amount": "1.00"}),
                    ),
                Kind::Read => client.get(format!("{gateway}/api/movies?limit=20")),
                Kind::MovieWrite => client
                    .post(format!("{gateway}/api/movies"))
                    .json(&json!({"title": marker, "description": "load"})),
            };
            let expected = match kind {
                Kind::Order => 202,
                Kind::Read => 200,
                Kind::MovieWrite => 201,
            };
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Read the body: a cut connection mid-body is a failure too.
                    match response.bytes().await {
                        Ok(_) if status == expected => Ok(()),
                        Ok(_) => Err(format!("status {status}")),
                        Err(error) => Err(failure_kind(&error)),
                    }
                }
                Err(error) => Err(failure_kind(&error)),
            };
            let at = start.elapsed().as_secs_f64();
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            let counts = &mut *counts;
            let tally = match kind {
                Kind::Order => &mut counts.orders,
                Kind::Read => &mut counts.movies,
                Kind::MovieWrite => &mut counts.writes,
            };
            tally.sent += 1;
            match outcome {
                Ok(()) => {
                    tally.ok += 1;
                    match kind {
                        Kind::Order => counts.accepted.push(marker),
                        Kind::MovieWrite => counts.created.push(marker),
                        Kind::Read => {}
                    }
                }
                Err(failure) => {
                    *tally.failures.entry(failure).or_default() += 1;
                    counts.first_failure.get_or_insert(at);
                    counts.last_failure = Some(at);
                    if kind != Kind::Read {
                        counts.first_write_failure.get_or_insert(at);
                        counts.last_write_failure = Some(at);
                    }
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    let mut file = std::fs::File::create(&args.accepted)
        .with_context(|| format!("creating {}", args.accepted.display()))?;
    for marker in &counts.accepted {
        writeln!(file, "{marker}")?;
    }
    if let Some(path) = &args.created {
        let mut file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        for marker in &counts.created {
            writeln!(file, "{marker}")?;
        }
    }
    let tally = |t: &Tally| json!({"sent": t.sent, "ok": t.ok, "failures": t.failures});
    println!(
        "{}",
        json!({
            "seconds": start.elapsed().as_secs_f64(),
            "movies": tally(&counts.movies),
            "orders": tally(&counts.orders),
            "movie_writes": tally(&counts.writes),
            "accepted": counts.accepted.len(),
            "created": counts.created.len(),
            "first_failure_s": counts.first_failure,
            "last_failure_s": counts.last_failure,
            "first_write_failure_s": counts.first_write_failure,
            "last_write_failure_s": counts.last_write_failure,
        })
    );
    Ok(())
}
