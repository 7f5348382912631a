//! The harness shared by `tests/audit.rs` (the audit on the real binaries) and
//! `benches/platform.rs` (speed and memory figures): building and running the three service
//! binaries on loopback ports, and scratch databases and queues that vanish afterwards.
//!
//! It reads `DATABASE_URL` (an administrative connection; scratch databases are created from it)
//! and `AMQP_URL`, as `scripts/test` and `scripts/bench` set them.

pub mod audit;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sqlx::{Connection, PgConnection};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The administrative PostgreSQL connection scratch databases are made from.
pub fn admin_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/postgres",
    )
}

/// The broker the services and the harness talk to.
pub fn amqp_url() -> String {
    env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// The URL of database `name` on the same server as the administrative connection.
pub fn database_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A port free on 127.0.0.1 right now (the service binds it a moment later).
pub fn free_port() -> Result<u16> {
    let [port] = free_ports()?;
    Ok(port)
}

/// `N` different ports free on 127.0.0.1 right now: each is held until all are taken, as ports
/// taken one after the other, each released at once, may be the same port twice (a bench run
/// failed so, its inventory finding its port taken by the gateway).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

/// The folder holding the service binaries: `SERVICE_BINARIES` when set (to run other binaries,
/// such as the release ones deployed); otherwise they are built with the caller's profile by the
/// platform's build command for it (`provisioner::render::binaries::build`), a no-op when fresh:
/// - A test (the `dev` profile) runs that command, `cargo test --workspace --no-run`, itself:
///   under the README's test command it has nothing to do. Through `cargo run -p provisioner`, which
///   unifies other features, it built 64 of the workspace's crates a second time in the middle of
///   the tests, and the provisioner's 46 a third (69 s on two cores).
/// - The bench (`release`) runs `provision build`, which builds what is deployed.
pub fn service_binaries() -> Result<PathBuf> {
    if let Some(folder) = std::env::var_os("SERVICE_BINARIES") {
        let folder = PathBuf::from(folder);
        for name in ["gateway", "inventory", "billing"] {
            ensure!(
                folder.join(name).is_file(),
                "SERVICE_BINARIES={}: no {name} binary there",
                folder.display()
            );
        }
        return Ok(folder);
    }
    let exe = std::env::current_exe()?;
    // The caller runs from `target/<profile>/deps/`.
    let profile_folder = exe
        .parent()
        .and_then(Path::parent)
        .context("the caller does not run from target/<profile>/deps/")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .context("the crate sits two folders below the workspace")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace).stderr(Stdio::inherit());
    // Without what cargo set for this crate, as provision's own builds (see `CRATE_VARIABLES`):
    // ring's build script reruns when CARGO_MANIFEST_DIR changes, and with it everything above
    // ring (rustls, sqlx, lapin, the services), so the tests' build and this one took turns to
    // rebuild them (35 s each time).
    for (name, _) in std::env::vars_os() {
        if name == "OUT_DIR" || name.to_str().is_some_and(set_for_this_crate) {
            build.env_remove(name);
        }
    }
    if profile_folder
        .file_name()
        .is_some_and(|name| name != "release")
    {
        // The same target folder as the caller's (cargo passes CARGO_TARGET_DIR on when set).
        let status = build
            .args(["test", "--locked", "--quiet", "--workspace", "--no-run"])
            .status()
            .context("running cargo test --workspace --no-run")?;
        ensure!(status.success(), "cargo test --workspace --no-run failed");
        return Ok(profile_folder.to_path_buf());
    }
    // provision itself in release too, as scripts/build-release builds it: fresh after it.
    build.args([
        "run",
        "--release",
        "--locked",
        "--quiet",
        "-p",
        "provisioner",
        "--",
        "build",
    ]);
    let output = build.output().context("running provision build")?;
    ensure!(output.status.success(), "provision build failed");
    let folder = String::from_utf8(output.stdout).context("provision build printed no path")?;
    Ok(PathBuf::from(folder.trim()))
}

/// Whether cargo sets variable `name` for a crate it runs (the Cargo Book's list, as the
/// provisioner's `CRATE_VARIABLES`, besides `OUT_DIR`).
fn set_for_this_crate(name: &str) -> bool {
    name.starts_with("CARGO_MANIFEST_")
        || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// The services' speed settings a caller's environment passes on to them (`BILLING_PREFETCH=2000
/// scripts/bench`); every other variable is the caller's to give.
pub const TUNING_VARIABLES: [&str; 6] = [
    "BILLING_PREFETCH",
    "BILLING_BATCH_SIZE",
    "BILLING_BATCHES_IN_FLIGHT",
    "BILLING_BATCH_TIMEOUT_MS",
    "PUBLISH_CHANNELS",
    "SERVER_THREADS",
];

/// A service process, killed when dropped so a failing run leaves nothing behind.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    /// Starts `bin_dir/name` with only `env` (and `PATH`) in its environment, plus the tuning
    /// variables of [`TUNING_VARIABLES`] this process has, so that a bench can try other values.
    pub fn start(bin_dir: &Path, name: &'static str, env: &[(&str, String)]) -> Result<Self> {
        let mut command = Command::new(bin_dir.join(name));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        for variable in TUNING_VARIABLES {
            if let Some(value) = std::env::var_os(variable) {
                command.env(variable, value);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }

    /// Starts `bin_dir/name` as systemd starts a socket-activated unit: `listener` is passed
    /// open (`LISTEN_FDS=1`, `LISTEN_FDS_FIRST_FD`), the service serves on it instead of binding.
    /// The caller keeps its own copy, as systemd does, so the socket outlives the process.
    pub fn start_with_listener(
        bin_dir: &Path,
        name: &'static str,
        env: &[(&str, String)],
        listener: &std::net::TcpListener,
    ) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let fd = listener.as_raw_fd();
        // Rust opens every socket close-on-exec; this one must survive the exec.
        rustix::io::fcntl_setfd(listener, rustix::io::FdFlags::empty())
            .context("cannot pass the listener: clearing its close-on-exec flag")?;
        let mut env = env.to_vec();
        env.push(("LISTEN_FDS", "1".to_owned()));
        env.push(("LISTEN_FDS_FIRST_FD", fd.to_string()));
        Self::start(bin_dir, name, &env)
    }

    /// The peak resident set size of the process so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        peak_rss_mib(&format!("/proc/{}/status", self.child.id()))
    }

    /// Sends SIGTERM, as `systemctl stop` does, and expects a clean exit 0.
    pub fn stop(mut self) -> Result<()> {
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
pub fn peak_rss_mib(status_file: &str) -> Result<f64> {
    let status =
        std::fs::read_to_string(status_file).with_context(|| format!("reading {status_file}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in {status_file}"))?;
    Ok(kib / 1024.0)
}

/// Waits until `url` answers 2xx, for at most 30 s.
pub async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<()> {
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

/// Databases and a queue private to one run, removed at the end whatever happened.
#[derive(Debug, Clone)]
pub struct Scratch {
    prefix: &'static str,
    suffix: String,
}

impl Scratch {
    /// Creates `<prefix>_movies_<random>` and `<prefix>_billing_<random>`.
    pub async fn create(prefix: &'static str) -> Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let scratch = Self { prefix, suffix };
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

    /// The random part of every scratch name, handy for unique test data.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    fn databases(&self) -> [String; 2] {
        [self.movies_db(), self.billing_db()]
    }

    /// Inventory's scratch database.
    pub fn movies_db(&self) -> String {
        format!("{}_movies_{}", self.prefix, self.suffix)
    }

    /// Billing's scratch database.
    pub fn billing_db(&self) -> String {
        format!("{}_billing_{}", self.prefix, self.suffix)
    }

    /// The scratch billing queue.
    pub fn queue(&self) -> String {
        format!("{}_billing_queue_{}", self.prefix, self.suffix)
    }

    /// Drops the databases and deletes the queue and its dead-letter queue.
    pub async fn drop_all(&self) -> Result<()> {
        let mut admin = PgConnection::connect(&admin_url()).await?;
        for db in self.databases() {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
        }
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let queue = self.queue();
        for queue in [service_common::dead_letter_queue_name(&queue), queue] {
            let _ = channel
                .queue_delete(&queue, lapin::options::QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "bye").await;
        Ok(())
    }
}

/// Runs `test` against the three services started on a fresh [`Scratch`] (named `prefix`), with a
/// client whose requests time out after `request_timeout`; the scratch databases and queue are
/// dropped afterwards, whatever the outcome.
pub async fn with_platform<F, Fut>(
    prefix: &'static str,
    request_timeout: Duration,
    test: F,
) -> Result<()>
where
    F: FnOnce(Scratch, Platform, reqwest::Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    with_platform_env(prefix, request_timeout, &[], test).await
}

/// [`with_platform`], the gateway with `gateway_env` besides its own settings.
pub async fn with_platform_env<F, Fut>(
    prefix: &'static str,
    request_timeout: Duration,
    gateway_env: &[(&'static str, String)],
    test: F,
) -> Result<()>
where
    F: FnOnce(Scratch, Platform, reqwest::Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let scratch = Scratch::create(prefix).await?;
    let outcome = async {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .build()?;
        let platform = Platform::start_with(&scratch, &client, gateway_env).await?;
        test(scratch.clone(), platform, client).await
    }
    .await;
    scratch.drop_all().await?;
    outcome
}

/// The three services on free loopback ports, against a [`Scratch`]'s databases and queue.
#[derive(Debug)]
pub struct Platform {
    bin_dir: PathBuf,
    billing_env: Vec<(&'static str, String)>,
    pub inventory: Service,
    /// `None` while billing is stopped.
    pub billing: Option<Service>,
    pub gateway: Service,
    /// `http://127.0.0.1:<port>` of inventory, reached directly.
    pub inventory_url: String,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway_url: String,
    /// Billing's readiness endpoint.
    pub billing_ready_url: String,
    /// `http://127.0.0.1:<port>/metrics` of the gateway's metrics listener.
    pub gateway_metrics_url: String,
}

impl Platform {
    /// Builds the binaries with the caller's profile, starts the three services and waits until
    /// each is ready.
    pub async fn start(scratch: &Scratch, client: &reqwest::Client) -> Result<Self> {
        Self::start_with(scratch, client, &[]).await
    }

    /// [`Platform::start`], the gateway with `gateway_env` besides its own settings.
    pub async fn start_with(
        scratch: &Scratch,
        client: &reqwest::Client,
        gateway_env: &[(&'static str, String)],
    ) -> Result<Self> {
        let bin_dir = service_binaries()?;
        let [gateway_port, inventory_port, billing_health_port, metrics_port] = free_ports()?;
        let inventory_url = format!("http://127.0.0.1:{inventory_port}");
        let inventory = Service::start(
            &bin_dir,
            "inventory",
            &[
                ("DATABASE_URL", database_url(&scratch.movies_db())),
                ("LISTEN_ADDR", format!("127.0.0.1:{inventory_port}")),
            ],
        )?;
        let billing_env = vec![
            ("DATABASE_URL", database_url(&scratch.billing_db())),
            ("AMQP_URL", amqp_url()),
            ("BILLING_QUEUE", scratch.queue()),
            (
                "HEALTH_LISTEN_ADDR",
                format!("127.0.0.1:{billing_health_port}"),
            ),
        ];
        let billing = Service::start(&bin_dir, "billing", &billing_env)?;
        let mut env = vec![
            ("LISTEN_ADDR", format!("127.0.0.1:{gateway_port}")),
            ("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("INVENTORY_URL", inventory_url.clone()),
            ("AMQP_URL", amqp_url()),
            ("BILLING_QUEUE", scratch.queue()),
        ];
        env.extend_from_slice(gateway_env);
        let gateway = Service::start(&bin_dir, "gateway", &env)?;
        let platform = Self {
            bin_dir,
            billing_env,
            inventory,
            billing: Some(billing),
            gateway,
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            billing_ready_url: format!("http://127.0.0.1:{billing_health_port}/ready"),
            gateway_metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            inventory_url,
        };
        wait_ready(client, &format!("{}/ready", platform.inventory_url)).await?;
        wait_ready(client, &platform.billing_ready_url).await?;
        wait_ready(client, &format!("{}/ready", platform.gateway_url)).await?;
        Ok(platform)
    }

    /// Stops billing with SIGTERM, as `systemctl stop billing` does; it must exit 0.
    pub fn stop_billing(&mut self) -> Result<()> {
        match self.billing.take() {
            Some(billing) => billing.stop(),
            None => bail!("billing is already stopped"),
        }
    }

    /// Starts billing again, without waiting for it: the caller measures or waits for its work.
    pub fn start_billing(&mut self) -> Result<&Service> {
        ensure!(self.billing.is_none(), "billing is already running");
        let billing = Service::start(&self.bin_dir, "billing", &self.billing_env)?;
        Ok(self.billing.insert(billing))
    }
}
