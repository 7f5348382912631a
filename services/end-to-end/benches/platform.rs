//! The platform's speed and memory figures: the three release binaries on loopback ports, loaded
//! by this process, with a reference measured in the same run for each ratio: nginx proxying to
//! the same inventory (for the gateway), a raw confirmed publisher (for the gateway's publishes)
//! and a raw consumer (for billing's drain), both with lapin straight to the broker. Each reference
//! is measured around what it is compared with, so that a machine slowing down or speeding up
//! during the run weighs on both alike: each comparison runs in rounds, ours and the reference in
//! turn. Billing's drain is cut into rounds by stopping billing as systemd would and starting it
//! again, and the raw consumer takes a quarter of a backlog of its own in each round (its queue
//! filled in the publish rounds, beside billing's). Nothing consumes while orders are published,
//! whoever publishes them, and each side of a broker round starts once the broker is quiet. Each
//! ratio is taken over all its rounds, and each round's is printed too: how far one round can stray
//! says how far to trust one run.
//!
//! Each load's CPU is read from `/proc` around it, by process (the services, nginx, PostgreSQL,
//! RabbitMQ, this process as the client), and printed per request: where the time goes, and
//! why a ratio is what it is on a machine whose cores every process shares.
//!
//! It prints figures and asserts none of them: a slow or noisy machine changes the numbers, never
//! the outcome. It fails only on functional errors (a non-2xx answer, an order that never becomes
//! a row), because then the figures would describe something other than the platform working.
//!
//! It needs `DATABASE_URL` (an administrative connection; scratch databases are created from it)
//! and `AMQP_URL`, as `scripts/bench` sets them. All load goes to 127.0.0.1 and is bounded both in
//! count and in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use end_to_end::{
    amqp_url, database_url, free_ports, peak_rss_mib, service_binaries, Platform, Scratch, Service,
};
use futures_util::StreamExt;
use gateway::http1;
use http::Method;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::BasicProperties;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Concurrent clients of the closed-loop HTTP loads.
const CLIENTS: usize = 64;
/// Most requests of one HTTP load; the load also ends at `LOAD_TIME_LIMIT`, whichever comes first.
/// Loads of a second or less moved the GET ratio by a fifth between two runs of the same binaries
/// (0.92x and 1.11x); these take several seconds each.
const PROXY_REQUESTS: usize = 80_000;
/// Most orders posted through the gateway; each one is a broker round trip with a confirm. Rounds
/// of a second or less (15,000 orders, and 25,000 for the raw publisher) gave round ratios from
/// 0.36x to 1.23x within one run: a broker pause of a few hundred milliseconds, which either side
/// may meet, halved a round. Rounds of several seconds each (60,000 and 100,000) still differ
/// (0.79x to 1.43x in one run): the ratio over all four is the figure, and it too is best compared
/// over several runs.
const PUBLISH_REQUESTS: usize = 240_000;
/// Time bound of each HTTP load.
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(20);
/// The direct and proxied loads alternate in this many rounds, so that neither is measured only
/// on a colder or warmer platform than the other.
const PROXY_ROUNDS: u32 = 4;
/// Requests sent before each measured load, so connection set-up and cold caches are not measured.
const WARM_UP_REQUESTS: usize = 500;
/// Orders the raw publisher queues while billing is stopped, then drained (with the gateways'), in
/// rounds of several seconds (see `PUBLISH_REQUESTS`).
const BACKLOG_ORDERS: usize = 400_000;
/// The publishes and the drain alternate with their references in this many rounds, as the GET
/// loads do.
const BROKER_ROUNDS: usize = 4;
/// Orders the raw publisher queues in each round.
const RAW_ROUND: usize = BACKLOG_ORDERS / BROKER_ROUNDS;
/// Messages the raw consumer takes in each round, from a queue filled for it: about as many as
/// billing drains in one (a quarter of the raw publisher's and the gateways' orders). With a
/// quarter of the raw publisher's alone, its rounds lasted under a second, and their ratios
/// ranged from 0.66x to 1.24x within one run, as the publishes' did in rounds as short.
const RAW_CONSUME_ROUND: usize = 2 * RAW_ROUND;
/// Time bound of the naive insert loop; its rate is computed from the rows it managed.
const NAIVE_TIME_LIMIT: Duration = Duration::from_secs(15);
/// Movies the proxy loads read, in turn.
const MOVIES: usize = 16;
/// Unconfirmed messages the raw publisher keeps in flight on its one channel.
const RAW_IN_FLIGHT: usize = 256;
/// The raw consumer's prefetch; it acknowledges every `RAW_ACK_EVERY` messages at once.
const RAW_PREFETCH: u16 = 500;
const RAW_ACK_EVERY: u64 = 250;
/// How long accepted orders may take to become rows before the run is declared broken.
const ROW_DEADLINE: Duration = Duration::from_secs(60);
/// The gateways run with their rate limit on, as the figures are to be taken with every layer of
/// the API's path: requests per second per client address, far above any load here (every client
/// is 127.0.0.1), so that nothing is refused (the bench fails on any 429).
const RATE_LIMIT_PER_SECOND: &str = "100000000";

/// The gateways' settings besides their addresses: the rate limit on.
fn gateway_layers() -> [(&'static str, String); 1] {
    [("RATE_LIMIT_PER_SECOND", RATE_LIMIT_PER_SECOND.to_owned())]
}

/// The files of the bench's TLS pair: a CA, inventory's certificate for 127.0.0.1 and the
/// gateway's client certificate, as `provision` gives the hosts (ECDSA P-256, rcgen).
struct TlsFiles {
    _dir: tempfile::TempDir,
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl TlsFiles {
    fn make() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name).display().to_string();
        let ca_key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key)?;
        std::fs::write(path("ca.crt"), ca.pem())?;
        for (name, names) in [("server", "127.0.0.1"), ("client", "gateway")] {
            let key = rcgen::KeyPair::generate()?;
            let cert = rcgen::CertificateParams::new(vec![names.to_owned()])?
                .signed_by(&key, &ca, &ca_key)?;
            std::fs::write(path(&format!("{name}.crt")), cert.pem())?;
            std::fs::write(path(&format!("{name}.key")), key.serialize_pem())?;
        }
        Ok(Self {
            ca: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
            _dir: dir,
        })
    }
}

/// AMQPS in front of the bench's broker, whose own TLS listener is not configured here: TLS
/// (rustls, the server certificate) on a loopback port, relayed in clear to the broker's port.
/// What publishing over AMQPS costs the gateway, plus the relay's work on the same cores.
async fn amqps_relay(files: &TlsFiles) -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let config = service_common::tls::server_config(
        std::path::Path::new(&files.server_cert),
        std::path::Path::new(&files.server_key),
        None,
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let broker = url::Url::parse(&amqp_url())?;
    let upstream = format!(
        "{}:{}",
        broker.host_str().context("AMQP_URL has a host")?,
        broker.port().unwrap_or(5672)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let relay = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = broker.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            });
        }
    });
    Ok((port, relay))
}

/// A second inventory and gateway as `provision` sets them up between machines: inventory over
/// HTTPS asking for the gateway's certificate, the gateway publishing over AMQPS (the relay).
struct TlsPair {
    _inventory: Service,
    gateway: Service,
    gateway_url: String,
    relay: tokio::task::JoinHandle<()>,
    _files: TlsFiles,
}

impl TlsPair {
    async fn start(scratch: &Scratch, client: &reqwest::Client) -> Result<Self> {
        let files = TlsFiles::make()?;
        let (relay_port, relay) = amqps_relay(&files).await?;
        let mut amqps = url::Url::parse(&amqp_url())?;
        amqps
            .set_scheme("amqps")
            .map_err(|()| anyhow::anyhow!("AMQP_URL cannot become amqps://"))?;
        amqps
            .set_port(Some(relay_port))
            .map_err(|()| anyhow::anyhow!("AMQP_URL takes no port"))?;
        let bin_dir = service_binaries()?;
        let [inventory_port, gateway_port] = free_ports()?;
        let inventory = Service::start(
            &bin_dir,
            "inventory",
            &[
                ("DATABASE_URL", database_url(&scratch.movies_db())),
                ("LISTEN_ADDR", format!("127.0.0.1:{inventory_port}")),
                ("TLS_CERT_FILE", files.server_cert.clone()),
                ("TLS_KEY_FILE", files.server_key.clone()),
                ("TLS_CLIENT_CA_FILE", files.ca.clone()),
            ],
        )?;
        let mut env = vec![
            ("LISTEN_ADDR", format!("127.0.0.1:{gateway_port}")),
            (
                "INVENTORY_URL",
                format!("https://127.0.0.1:{inventory_port}"),
            ),
            ("INVENTORY_CA_FILE", files.ca.clone()),
            ("INVENTORY_CLIENT_CERT_FILE", files.client_cert.clone()),
            ("INVENTORY_CLIENT_KEY_FILE", files.client_key.clone()),
            ("AMQP_URL", amqps.to_string()),
            ("AMQP_CA_FILE", files.ca.clone()),
            ("BILLING_QUEUE", scratch.queue()),
        ];
        env.extend(gateway_layers());
        let gateway = Service::start(&bin_dir, "gateway", &env)?;
        let gateway_url = format!("http://127.0.0.1:{gateway_port}");
        // Ready means inventory answered over mutual TLS and the broker over AMQPS.
        end_to_end::wait_ready(client, &format!("{gateway_url}/ready")).await?;
        Ok(Self {
            _inventory: inventory,
            gateway,
            gateway_url,
            relay,
            _files: files,
        })
    }
}

impl Drop for TlsPair {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// Progress goes to stderr so that stdout holds only the table.
fn progress(what: &str) {
    eprintln!("bench: {what}");
}

/// Rows in `orders`; zero while billing has not created the table yet.
async fn order_count(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
        .fetch_one(db)
        .await
        .unwrap_or(0)
}

/// The highest id in `orders` (zero while billing has not created the table yet): one look at
/// the primary key's index, where counting the rows reads them all. Ids count up from 1 in the
/// bench's fresh table, so it is at least the number of rows.
async fn highest_order_id(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM orders")
        .fetch_one(db)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Waits until `orders` holds exactly `expected` rows; more, or fewer by the deadline, is an error.
/// It polls the highest id, which costs the database next to nothing while billing drains, and
/// counts the rows only once that id says there may be enough.
async fn wait_for_orders(db: &mut PgConnection, expected: i64) -> Result<()> {
    let deadline = Instant::now() + ROW_DEADLINE;
    loop {
        let count = if highest_order_id(db).await >= expected {
            order_count(db).await
        } else {
            0
        };
        if count == expected {
            return Ok(());
        }
        ensure!(count < expected, "{count} order rows, expected {expected}");
        if Instant::now() > deadline {
            let count = order_count(db).await;
            bail!("{count} order rows after {ROW_DEADLINE:?}, expected {expected}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A load's requests, each written whole beforehand and sent in turn, and the `host:port` they go
/// to.
#[derive(Clone)]
struct Load {
    address: Arc<str>,
    method: Method,
    requests: Arc<[Vec<u8>]>,
}

impl Load {
    /// `GET` of `paths`, in turn, from `base` (`http://host:port`).
    fn get(base: &str, paths: Vec<String>) -> Result<Self> {
        Self::new(base, Method::GET, &paths, b"", b"")
    }

    /// `POST path` of `body` as JSON, the same for every request, to `base`.
    fn post_json(base: &str, path: &str, body: &Value) -> Result<Self> {
        let body = serde_json::to_vec(body)?;
        let fields = b"content-type: application/json\r\n";
        Self::new(base, Method::POST, &[path.to_owned()], fields, &body)
    }

    fn new(
        base: &str,
        method: Method,
        paths: &[String],
        fields: &[u8],
        body: &[u8],
    ) -> Result<Self> {
        let address: Arc<str> = base.trim_start_matches("http://").into();
        let host = http::HeaderValue::from_str(&address)?;
        let requests = paths
            .iter()
            .map(|path| {
                let mut request = Vec::new();
                http1::write_request(&mut request, &method, "", path, &host, fields, body);
                request
            })
            .collect();
        Ok(Self {
            address,
            method,
            requests,
        })
    }
}

/// A kept-alive HTTP/1.1 connection of the load generator: the request written whole, the answer
/// read by the gateway's own parser for inventory's answers (`gateway::http1`), on the client's
/// task. The bench's client shares the cores with everything it measures: reqwest took 35 to 40 µs
/// of CPU per request, hyper's client connection (a task of its own, the request and its answer
/// passed through channels) 16 to 29 in the runs of 2026-12-04, this 9 to 15 since.
struct LoadConnection {
    stream: tokio::net::TcpStream,
    buffer: BytesMut,
}

/// An answer as the load generator keeps it: the body only when the status is not a success, to
/// say why.
struct Answer {
    status: http::StatusCode,
    body: Vec<u8>,
    keep_alive: bool,
}

impl LoadConnection {
    async fn open(address: &str) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Sends `request` and reads its answer whole.
    async fn exchange(&mut self, request: &[u8], method: &Method) -> Result<Answer> {
        self.stream.write_all(request).await?;
        let head = loop {
            if let Some(head) = http1::take_head(&mut self.buffer, method)? {
                break head;
            }
            self.read()
                .await?
                .context("the server closed the connection before answering")?;
        };
        let mut body = Vec::new();
        let mut decoder = http1::Decoder::new(head.framing);
        loop {
            match decoder.decode(&mut self.buffer)? {
                http1::Decoded::Data(data) if !head.status.is_success() => {
                    body.extend_from_slice(&data)
                }
                http1::Decoded::Data(_) => {}
                http1::Decoded::Done => break,
                http1::Decoded::NeedMore => match self.read().await? {
                    Some(()) => {}
                    None if decoder == http1::Decoder::UntilClose => break,
                    None => bail!("the server closed the connection in the middle of an answer"),
                },
            }
        }
        Ok(Answer {
            status: head.status,
            body,
            keep_alive: head.keep_alive,
        })
    }

    /// Reads what the server sent: `None` once it closed the connection.
    async fn read(&mut self) -> Result<Option<()>> {
        self.buffer.reserve(4096);
        Ok((self.stream.read_buf(&mut self.buffer).await? > 0).then_some(()))
    }
}

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

/// `clients` clients, each sending its next request as soon as the previous answer is read, until
/// `count` requests are sent or `limit` has passed. Any non-2xx answer fails the load.
async fn closed_loop(
    load: &Load,
    clients: usize,
    count: usize,
    limit: Duration,
) -> Result<LoadFigures> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (load, next) = (load.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut connection = Some(LoadConnection::open(&load.address).await?);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                let open = match connection.as_mut() {
                    Some(open) => open,
                    // The server said it closes the connection after its last answer (nginx
                    // does after `keepalive_requests`): a new one takes the next request.
                    None => connection.insert(LoadConnection::open(&load.address).await?),
                };
                let request = &load.requests[n % load.requests.len()];
                let answer = open
                    .exchange(request, &load.method)
                    .await
                    .with_context(|| format!("request {n} to {}", load.address))?;
                latencies.push(sent.elapsed());
                ensure!(
                    answer.status.is_success(),
                    "request {n}: {} {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
                if !answer.keep_alive {
                    connection = None;
                }
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
async fn measured_load(load: &Load, clients: usize, count: usize) -> Result<(usize, LoadFigures)> {
    let warm_up = closed_loop(load, clients, WARM_UP_REQUESTS, LOAD_TIME_LIMIT).await?;
    Ok((
        warm_up.requests,
        closed_loop(load, clients, count, LOAD_TIME_LIMIT).await?,
    ))
}

/// Runs the reference and ours one after the other: the reference first in even rounds and last
/// in odd ones, so that neither is always measured on a machine warmer than the other's. Each
/// starts once the broker is quiet ([`broker_quiet`]).
async fn in_turn<A, B>(
    round: usize,
    reference: impl std::future::Future<Output = A>,
    ours: impl std::future::Future<Output = B>,
) -> (A, B) {
    if round.is_multiple_of(2) {
        broker_quiet().await;
        let reference = reference.await;
        broker_quiet().await;
        (reference, ours.await)
    } else {
        broker_quiet().await;
        let ours = ours.await;
        broker_quiet().await;
        (reference.await, ours)
    }
}

/// Longest wait for the broker to go quiet.
const QUIET_LIMIT: Duration = Duration::from_secs(30);
/// The broker is quiet when it used at most this share of a core over `QUIET_SAMPLE`.
const QUIET_SHARE: f64 = 0.1;
const QUIET_SAMPLE: Duration = Duration::from_millis(300);

/// Waits until RabbitMQ has finished what the load before left it to do (a quorum queue writes
/// the messages it confirmed to its segment files afterwards), so that no side of a round pays
/// for the side or the untimed filling before it. The rounds of one run still differ (0.79x to
/// 1.43x in the first run with it): the broker's own pauses, which no wait removes.
async fn broker_quiet() {
    let deadline = Instant::now() + QUIET_LIMIT;
    let busiest = QUIET_SHARE * QUIET_SAMPLE.as_secs_f64() * TICKS_PER_SECOND;
    while Instant::now() < deadline {
        let before = CpuTimes::now();
        tokio::time::sleep(QUIET_SAMPLE).await;
        let mut used = CpuTimes::default();
        used.add_since(&before);
        if used.0.get("rabbitmq").copied().unwrap_or(0) as f64 <= busiest {
            return;
        }
    }
    progress(&format!(
        "the broker was still busy after {QUIET_LIMIT:?}; going on"
    ));
}

/// One comparison in rounds: in each, how many units (orders, rows, messages) ours and the
/// reference handled, and in what time.
#[derive(Debug, Default)]
struct Rounds(Vec<[Handled; 2]>);

/// Units handled, and in what time.
#[derive(Debug, Default, Clone, Copy)]
struct Handled {
    units: usize,
    time: Duration,
}

impl Handled {
    fn rate(self) -> f64 {
        self.units as f64 / self.time.as_secs_f64()
    }
}

impl Rounds {
    const OURS: usize = 0;
    const REFERENCE: usize = 1;

    fn add(
        &mut self,
        ours: usize,
        ours_time: Duration,
        reference: usize,
        reference_time: Duration,
    ) {
        self.0.push([
            Handled {
                units: ours,
                time: ours_time,
            },
            Handled {
                units: reference,
                time: reference_time,
            },
        ]);
    }

    /// One side's units and time over every round.
    fn total(&self, side: usize) -> Handled {
        self.0
            .iter()
            .fold(Handled::default(), |sum, round| Handled {
                units: sum.units + round[side].units,
                time: sum.time + round[side].time,
            })
    }

    fn ours(&self) -> Handled {
        self.total(Self::OURS)
    }

    fn reference(&self) -> Handled {
        self.total(Self::REFERENCE)
    }

    /// Ours against the reference over every round: units per second over units per second.
    fn ratio(&self) -> f64 {
        self.ours().rate() / self.reference().rate()
    }

    /// Each round's ratio, in the order they ran.
    fn each_ratio(&self) -> String {
        self.0
            .iter()
            .map(|[ours, reference]| format!("{:.2}", ours.rate() / reference.rate()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One round of billing's drain.
struct DrainRound {
    /// Rows stored from its first row of the round to the round's end, and in what time.
    rows: usize,
    steady: Duration,
    /// Rows stored from its start to the round's end, and in what time.
    rows_from_start: usize,
    from_start: Duration,
}

/// Starts billing and waits until the highest order id reaches `target`: one round of the drain.
/// It is timed from billing's start, and from its first row of the round, which marks the end of
/// the start (its connections, the queue's declaration); the CPU is counted from that row on.
/// With `stop`, billing is then stopped, as systemd stops it: the batches it holds are stored or
/// go back to the queue.
async fn drain_round(
    platform: &mut Platform,
    db: &mut PgConnection,
    target: i64,
    cpu: &mut CpuTimes,
    stop: bool,
) -> Result<DrainRound> {
    let before = highest_order_id(db).await;
    let start = Instant::now();
    platform.start_billing()?;
    let (first_row, first_id) = wait_for_id(db, before + 1, start).await?;
    let cpu_before = CpuTimes::now();
    let (end, last_id) = wait_for_id(db, target, start).await?;
    cpu.add_since(&cpu_before);
    if stop {
        platform.stop_billing()?;
    }
    Ok(DrainRound {
        rows: usize::try_from(last_id - first_id)?,
        steady: end - first_row,
        rows_from_start: usize::try_from(last_id - before)?,
        from_start: end - start,
    })
}

/// Polls the highest order id until it is at least `target`; returns when it was seen, and the id.
async fn wait_for_id(db: &mut PgConnection, target: i64, since: Instant) -> Result<(Instant, i64)> {
    loop {
        let id = highest_order_id(db).await;
        if id >= target {
            return Ok((Instant::now(), id));
        }
        ensure!(
            since.elapsed() < ROW_DEADLINE,
            "billing reached order id {id} of {target} in {ROW_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// CPU time (user and system, in ticks of 10 ms) each process of the machine has used, summed by
/// name, from `/proc`: what a load cost, and who paid for it. This process is `bench`, RabbitMQ's
/// virtual machine `rabbitmq`, and kernel threads and anything else `other`.
#[derive(Debug, Default, Clone)]
struct CpuTimes(std::collections::BTreeMap<&'static str, u64>);

/// The processes named in [`CpuTimes`], by their command name.
const CPU_NAMES: [(&str, &str); 6] = [
    ("gateway", "gateway"),
    ("inventory", "inventory"),
    ("billing", "billing"),
    ("nginx", "nginx"),
    ("postgres", "postgres"),
    ("beam.smp", "rabbitmq"),
];
/// `/proc`'s clock ticks per second (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

impl CpuTimes {
    fn now() -> Self {
        let me = std::process::id();
        let mut times = Self::default();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // A process that has just exited has no stat any more: it is skipped.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let command = &stat[open + 1..close];
            // utime and stime, the 14th and 15th fields of proc(5)'s stat.
            let mut fields = stat[close + 1..].split_whitespace().skip(11);
            let ticks: u64 = fields
                .by_ref()
                .take(2)
                .map(|field| field.parse::<u64>().unwrap_or(0))
                .sum();
            let name = if pid == me {
                "bench"
            } else {
                CPU_NAMES
                    .iter()
                    .find(|(c, _)| *c == command)
                    .map_or("other", |(_, name)| *name)
            };
            *times.0.entry(name).or_default() += ticks;
        }
        times
    }

    /// Runs `work`, adding the CPU used meanwhile.
    async fn around<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        let before = Self::now();
        let done = work.await;
        self.add_since(&before);
        done
    }

    /// Adds what each name has used since `earlier`. A process that ended meanwhile takes its
    /// time with it: a name's time never counts below nothing.
    fn add_since(&mut self, earlier: &Self) {
        for (name, ticks) in Self::now().0 {
            let before = earlier.0.get(name).copied().unwrap_or(0);
            *self.0.entry(name).or_default() += ticks.saturating_sub(before);
        }
    }

    /// Microseconds of CPU per one of `count` (requests, rows), in all and then by name, the
    /// costliest first.
    fn per_unit(&self, count: usize) -> String {
        let micros = |ticks: u64| ticks as f64 * 1e6 / TICKS_PER_SECOND / count.max(1) as f64;
        let mut named: Vec<(&str, u64)> = self.0.iter().map(|(n, t)| (*n, *t)).collect();
        named.sort_by_key(|(_, ticks)| std::cmp::Reverse(*ticks));
        let total: u64 = named.iter().map(|(_, t)| t).sum();
        let mut line = format!("{:>5.0} =", micros(total));
        for (name, ticks) in named.into_iter().filter(|(_, t)| *t > 0) {
            line.push_str(&format!(" {name} {:.0}", micros(ticks)));
        }
        line
    }
}

/// A connection of the bench's own to the broker of `AMQP_URL`.
async fn connect_broker() -> Result<lapin::Connection> {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ with AMQP_URL")
}

/// The raw confirmed publisher: publishes `count` orders straight to `queue` as the gateway does
/// (persistent, JSON, a fresh message id each) on one channel, `RAW_IN_FLIGHT` unconfirmed at most,
/// and waits for every confirm. Returns the time from the first publish to the last confirm.
async fn publish_backlog(queue: &str, count: usize) -> Result<Duration> {
    let connection = connect_broker().await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // The very declaration gateway and billing make, so they agree.
    service_common::declare_billing_queue(&connection, queue).await?;
    let body = serde_json::to_vec(
        &json!({"user_id": "bench_backlog", "number_of_items": 2, "total_amount": "19.99"}),
    )?;
    // A window of unconfirmed publishes: the oldest confirm is awaited before the next publish
    // once the window is full, so the broker never holds an unbounded number for us.
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(RAW_IN_FLIGHT);
    for _ in 0..count {
        if in_flight.len() == RAW_IN_FLIGHT {
            let confirm: lapin::publisher_confirm::PublisherConfirm =
                in_flight.pop_front().context("a confirm in flight")?;
            ensure!(
                confirm.await?.is_ack(),
                "the broker refused a backlog message"
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(uuid::Uuid::now_v7().to_string().into());
        in_flight.push_back(
            channel
                .basic_publish("", queue, BasicPublishOptions::default(), &body, properties)
                .await?,
        );
    }
    for confirm in in_flight {
        ensure!(
            confirm.await?.is_ack(),
            "the broker refused a backlog message"
        );
    }
    let elapsed = start.elapsed();
    let _ = connection.close(200, "bye").await;
    Ok(elapsed)
}

/// The raw consumer: takes `count` messages off `queue` with prefetch `RAW_PREFETCH`,
/// acknowledging `RAW_ACK_EVERY` at a time, and does nothing else with them. The ceiling of any
/// consumer of this broker. Returns the time it took.
async fn raw_consume(queue: &str, count: usize) -> Result<Duration> {
    let connection = connect_broker().await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let start = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue,
            "bench-raw-consumer",
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    let mut received = 0;
    while received < count {
        let delivery = tokio::time::timeout(ROW_DEADLINE, consumer.next())
            .await
            .context("the raw consumer waited too long for a message")?
            .context("the raw consumer's stream ended")??;
        received += 1;
        if delivery.delivery_tag % RAW_ACK_EVERY == 0 || received == count {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let elapsed = start.elapsed();
    let _ = connection.close(200, "bye").await;
    Ok(elapsed)
}

/// Deletes `queue` and its dead-letter queue.
async fn delete_queues(queue: &str) -> Result<()> {
    let connection = connect_broker().await?;
    let channel = connection.create_channel().await?;
    for queue in [
        queue.to_owned(),
        service_common::queue::dead_letter_queue_name(queue),
    ] {
        channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "bye").await;
    Ok(())
}

/// nginx in front of the same inventory, as an operator would put it: `proxy_pass` to an upstream
/// with kept-alive connections, a worker per core, no access log. Stopped when dropped.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Nginx {
    async fn start(client: &reqwest::Client, upstream: &str) -> Result<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .context("nginx is missing: `scripts/prerequisites bench` installs it (Debian's nginx-light)")?;
        let port = end_to_end::free_port()?;
        let dir = std::env::temp_dir().join(format!("bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let upstream = upstream.trim_start_matches("http://");
        let d = dir.display();
        let config = format!(
            "worker_processes auto;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               upstream inventory {{ server {upstream}; keepalive 128; }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://inventory; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config)?;
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let nginx = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        end_to_end::wait_ready(client, &format!("{}/ready", nginx.url)).await?;
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: nginx's graceful stop of its master and workers.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::QUIT,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
        .bind(uuid::Uuid::now_v7())
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
    let scratch = Scratch::create("bench").await?;
    let outcome = run(&scratch).await;
    // The raw consumer's queue holds up to a run's backlog when a run fails.
    let raw_deleted = delete_queues(&raw_queue(&scratch.queue())).await;
    let cleaned = scratch.drop_all().await;
    outcome?;
    raw_deleted.context("removing the raw consumer's queue")?;
    cleaned.context("removing the scratch databases and queues")
}

/// The raw consumer's queue, beside billing's `queue`.
fn raw_queue(queue: &str) -> String {
    format!("{queue}-raw")
}

async fn run(scratch: &Scratch) -> Result<()> {
    progress("starting inventory, billing and gateway (release builds)");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut platform = Platform::start_with(scratch, &client, &gateway_layers()).await?;
    let direct = platform.inventory_url.clone();
    let through_gateway = platform.gateway_url.clone();
    let billing_db = database_url(&scratch.billing_db());
    let queue = scratch.queue();

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
    let movie_paths: Vec<String> = ids.iter().map(|id| format!("/api/movies/{id}")).collect();
    let get_movie = |base: &str| Load::get(base, movie_paths.clone());

    progress("starting nginx in front of the same inventory (the gateway's reference)");
    let nginx = Nginx::start(&client, &direct).await?;
    let through_nginx = nginx.url.clone();
    progress("starting a second inventory and gateway with TLS between them, and AMQPS");
    let tls_pair = TlsPair::start(scratch, &client).await?;
    let through_tls_gateway = tls_pair.gateway_url.clone();

    progress("GET /api/movies/{id}: straight to inventory, through nginx, through the gateway and through the TLS gateway, in turn");
    let round_requests = PROXY_REQUESTS / PROXY_ROUNDS as usize;
    let round_limit = LOAD_TIME_LIMIT / PROXY_ROUNDS;
    let targets = [
        get_movie(&direct)?,
        get_movie(&through_nginx)?,
        get_movie(&through_gateway)?,
        get_movie(&through_tls_gateway)?,
    ];
    for target in &targets {
        closed_loop(target, CLIENTS, WARM_UP_REQUESTS, LOAD_TIME_LIMIT).await?;
    }
    let mut rounds: [Vec<LoadFigures>; 4] = Default::default();
    let mut get_cpu: [CpuTimes; 4] = Default::default();
    for _ in 0..PROXY_ROUNDS {
        for ((target, figures), cpu) in targets.iter().zip(rounds.iter_mut()).zip(&mut get_cpu) {
            figures.push(
                cpu.around(closed_loop(target, CLIENTS, round_requests, round_limit))
                    .await?,
            );
        }
    }
    let [direct_rounds, nginx_rounds, proxied_rounds, tls_rounds] = rounds;
    let direct_load = LoadFigures::merge(direct_rounds);
    let nginx_load = LoadFigures::merge(nginx_rounds);
    let proxied_load = LoadFigures::merge(proxied_rounds);
    let tls_load = LoadFigures::merge(tls_rounds);
    drop(nginx);

    // Nothing consumes while orders are published, through the gateway or raw, so neither
    // shares the cores with billing's work: the orders wait in the queue, for the drain.
    platform.stop_billing()?;
    let post_order = Load::post_json(
        &through_gateway,
        "/api/billing",
        &json!({"user_id": "bench_publish", "number_of_items": 1, "total_amount": 9.99}),
    )?;
    let mut publishes = Rounds::default();
    let mut publish_rounds = Vec::with_capacity(BROKER_ROUNDS);
    let mut warm_up = 0;
    let mut raw_publish_cpu = CpuTimes::default();
    let mut publish_cpu = CpuTimes::default();
    let raw_queue = raw_queue(&queue);
    for round in 0..BROKER_ROUNDS {
        progress(&format!(
            "publishes, round {} of {BROKER_ROUNDS}: the raw publisher and POST /api/billing through the gateway",
            round + 1
        ));
        let raw = raw_publish_cpu.around(publish_backlog(&queue, RAW_ROUND));
        // As many orders in flight as the raw publisher keeps unconfirmed: each waits for its
        // confirm.
        let ours = publish_cpu.around(measured_load(
            &post_order,
            RAW_IN_FLIGHT,
            PUBLISH_REQUESTS / BROKER_ROUNDS,
        ));
        let (raw_time, ours) = in_turn(round, raw, ours).await;
        let (raw_time, (warmed, load)) = (raw_time?, ours?);
        publishes.add(load.requests, load.elapsed, RAW_ROUND, raw_time);
        warm_up += warmed;
        publish_rounds.push(load);
        // The raw consumer's backlog, untimed, filled in the same rounds as billing's: both
        // queues then hold messages of about the same ages when drained (where a quorum queue
        // reads a message from may depend on how long ago it was written).
        publish_backlog(&raw_queue, RAW_CONSUME_ROUND).await?;
    }
    let publish_load = LoadFigures::merge(publish_rounds);
    progress("POST /api/billing through the TLS gateway (AMQPS)");
    let post_order = Load::post_json(
        &through_tls_gateway,
        "/api/billing",
        &json!({"user_id": "bench_publish_tls", "number_of_items": 1, "total_amount": 9.99}),
    )?;
    let (tls_warm_up, tls_publish_load) =
        measured_load(&post_order, RAW_IN_FLIGHT, PUBLISH_REQUESTS).await?;
    let tls_gateway_rss = tls_pair.gateway.peak_rss_mib()?;
    drop(tls_pair);
    // Every accepted order must become a row, warm-up included.
    let backlog =
        warm_up + publish_load.requests + tls_warm_up + tls_publish_load.requests + BACKLOG_ORDERS;

    // Billing drains the backlog in as many rounds, stopped (as systemd stops it) at the end of
    // each but the last, and the raw consumer takes a backlog of its own queue in each round.
    let mut db = PgConnection::connect(&billing_db).await?;
    let stored = highest_order_id(&mut db).await;
    ensure!(stored == 0, "{stored} orders stored before the drain");
    let mut drains = Rounds::default();
    let mut drain_from_start = (0, Duration::ZERO);
    let mut raw_consume_cpu = CpuTimes::default();
    let mut drain_cpu = CpuTimes::default();
    for round in 0..BROKER_ROUNDS {
        progress(&format!(
            "drain, round {} of {BROKER_ROUNDS}: the raw consumer, from a queue of its own, and billing",
            round + 1
        ));
        let raw = raw_consume_cpu.around(raw_consume(&raw_queue, RAW_CONSUME_ROUND));
        let target = (backlog * (round + 1) / BROKER_ROUNDS) as i64;
        // Stopped before the raw consumer's turn, so that it drains nothing meanwhile; left
        // running after the last round, with nothing left to drain, for its memory figure.
        let last = round + 1 == BROKER_ROUNDS;
        let ours = drain_round(&mut platform, &mut db, target, &mut drain_cpu, !last);
        let (raw_time, drained) = in_turn(round, raw, ours).await;
        let (raw_time, drained) = (raw_time?, drained?);
        drains.add(drained.rows, drained.steady, RAW_CONSUME_ROUND, raw_time);
        drain_from_start.0 += drained.rows_from_start;
        drain_from_start.1 += drained.from_start;
    }
    // Stopped and started between the rounds, billing stored every order, and each once.
    wait_for_orders(&mut db, backlog as i64).await?;

    // Read before the naive loop, which loads PostgreSQL, not the services.
    let memory = [
        ("gateway", platform.gateway.peak_rss_mib()?),
        ("gateway with TLS", tls_gateway_rss),
        ("inventory", platform.inventory.peak_rss_mib()?),
        (
            "billing (drain)",
            platform
                .billing
                .as_ref()
                .context("billing runs")?
                .peak_rss_mib()?,
        ),
    ];

    progress("reference: naive one-row-per-transaction inserts");
    let (naive_rows, naive_time) = naive_inserts(&scratch.billing_db(), BACKLOG_ORDERS).await?;
    let bench_rss = peak_rss_mib("/proc/self/status")?;

    print_report(&Report {
        direct: &direct_load,
        nginx: &nginx_load,
        proxied: &proxied_load,
        tls: &tls_load,
        publish: &publish_load,
        tls_publish: &tls_publish_load,
        publishes: &publishes,
        drain_from_start,
        drains: &drains,
        naive_rows,
        naive_time,
        memory: &memory,
        bench_rss,
        cpu: &[
            ("GET direct", &get_cpu[0], direct_load.requests),
            ("GET via nginx", &get_cpu[1], nginx_load.requests),
            ("GET via gateway", &get_cpu[2], proxied_load.requests),
            (
                "GET via gateway, inventory over TLS",
                &get_cpu[3],
                tls_load.requests,
            ),
            (
                "POST /api/billing",
                &publish_cpu,
                warm_up + publish_load.requests,
            ),
            ("raw publisher", &raw_publish_cpu, BACKLOG_ORDERS),
            ("billing drain, per row", &drain_cpu, drains.ours().units),
            (
                "raw consumer, per message",
                &raw_consume_cpu,
                drains.reference().units,
            ),
        ],
    });
    Ok(())
}

/// Everything the table shows.
#[derive(Debug)]
struct Report<'a> {
    direct: &'a LoadFigures,
    nginx: &'a LoadFigures,
    proxied: &'a LoadFigures,
    /// Through the gateway whose inventory is over mutual TLS.
    tls: &'a LoadFigures,
    publish: &'a LoadFigures,
    /// Through the gateway publishing over AMQPS (the relay).
    tls_publish: &'a LoadFigures,
    /// The gateway's publishes and the raw publisher's, round by round.
    publishes: &'a Rounds,
    /// Rows stored in the drain's rounds from each start of billing, and in what time: to compare
    /// with the naive loop.
    drain_from_start: (usize, Duration),
    /// Billing's drain from its first row of each round, and the raw consumer's, round by round.
    drains: &'a Rounds,
    naive_rows: usize,
    naive_time: Duration,
    memory: &'a [(&'static str, f64)],
    bench_rss: f64,
    /// Each load's CPU by process, and what it is divided by (requests, orders, rows).
    cpu: &'a [(&'static str, &'a CpuTimes, usize)],
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
    println!(
        "platform bench: release binaries on 127.0.0.1, {CLIENTS} closed-loop clients; \
         the gateways count every request (metrics) and rate-limit it ({RATE_LIMIT_PER_SECOND}/s)"
    );
    println!();
    println!(
        "{:<36} {:>8} {:>10} {:>9} {:>9}",
        "load", "requests", "req/s", "p50 ms", "p99 ms"
    );
    load_row("GET /api/movies/{id} direct", r.direct);
    load_row("GET /api/movies/{id} via nginx", r.nginx);
    load_row("GET /api/movies/{id} via gateway", r.proxied);
    let ratio_row = |name: &str, ours: &LoadFigures, reference: &LoadFigures| {
        println!(
            "{name:<36} {:>8} {:>9.2}x {:>8.2}x {:>8.2}x",
            "",
            ours.per_second() / reference.per_second(),
            ours.percentile_ms(0.50) / reference.percentile_ms(0.50),
            ours.percentile_ms(0.99) / reference.percentile_ms(0.99),
        );
    };
    // A ratio over all rounds, then each round's.
    let rounds_row = |name: &str, rounds: &Rounds| {
        println!(
            "{name:<36} {:>8} {:>9.2}x   rounds {}",
            "",
            rounds.ratio(),
            rounds.each_ratio()
        );
    };
    ratio_row("  ratio gateway/direct", r.proxied, r.direct);
    ratio_row("  ratio gateway/nginx", r.proxied, r.nginx);
    load_row("GET via gateway, inventory over TLS", r.tls);
    ratio_row("  ratio TLS/plain gateway", r.tls, r.proxied);
    load_row(
        &format!("POST /api/billing, {RAW_IN_FLIGHT} clients"),
        r.publish,
    );
    println!(
        "{:<36} {:>8} {:>10.0}",
        format!("raw publisher, 1 channel, {RAW_IN_FLIGHT} in flight"),
        r.publishes.reference().units,
        r.publishes.reference().rate()
    );
    rounds_row("  ratio gateway/raw publisher", r.publishes);
    load_row("POST /api/billing over AMQPS (relay)", r.tls_publish);
    ratio_row("  ratio AMQPS/AMQP gateway", r.tls_publish, r.publish);
    println!();
    let (rows_from_start, from_start) = r.drain_from_start;
    let drain_rate = rows_from_start as f64 / from_start.as_secs_f64();
    let naive_rate = r.naive_rows as f64 / r.naive_time.as_secs_f64();
    println!(
        "{:<36} {:>8} {:>10} {:>9}",
        "backlog", "rows", "rows/s", "seconds"
    );
    println!(
        "{:<36} {:>8} {:>10.0} {:>9.2}",
        "billing drain (from process starts)",
        rows_from_start,
        drain_rate,
        from_start.as_secs_f64()
    );
    println!(
        "{:<36} {:>8} {:>10.0} {:>9.2}",
        "billing drain (from first rows)",
        r.drains.ours().units,
        r.drains.ours().rate(),
        r.drains.ours().time.as_secs_f64()
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
    println!(
        "{:<36} {:>8} {:>10.0} {:>9.2}",
        format!("raw consumer, prefetch {RAW_PREFETCH}, no database"),
        r.drains.reference().units,
        r.drains.reference().rate(),
        r.drains.reference().time.as_secs_f64()
    );
    rounds_row("  ratio billing/raw consumer", r.drains);
    println!();
    println!("{:<36} {:>8}", "peak RSS (VmHWM)", "MiB");
    for (name, mib) in r.memory {
        println!("{name:<36} {mib:>8.1}");
    }
    println!("{:<36} {:>8.1}", "bench process (reference)", r.bench_rss);
    println!();
    println!("CPU per request, µs: all of it = each process's part (user and system, /proc)");
    for (name, cpu, count) in r.cpu {
        println!("{name:<36} {}", cpu.per_unit(*count));
    }
}
