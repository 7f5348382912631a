//! The command line: raw arguments (clap) validated into a command, and each command run against
//! the hosts, in parallel, with one SSH session per host.

use std::collections::BTreeSet;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::converge::apply::{self, progress, HostReport, Rollout};
use crate::converge::facts;
use crate::converge::parallel::{self, DEFAULT_FORKS};
use crate::converge::plan;
use crate::converge::ssh::{HostKeyStatus, SshTransport};
use crate::converge::status::{self, ClusterStatus, HostStatus};
use crate::converge::transport::{shell_quote, Transport};
use crate::desired::DesiredHost;
use crate::pki::{self, Pki};
use crate::render;
use crate::render::binaries::{self, BinarySet, Profile};
use crate::render::env_file::EnvFile;
use crate::render::inventory::Inventory;
use crate::render::platform::Platform;

/// Infrastructure as code for the platform: plan and apply over SSH to machines with systemd.
#[derive(Debug, Parser)]
#[command(name = "provision", version)]
pub struct Args {
    /// The inventory: hosts, roles and settings.
    #[arg(short = 'i', long, global = true, default_value = "inventory.toml")]
    pub inventory: PathBuf,
    /// Credentials and names (`.env.example` documents each variable).
    #[arg(long, global = true, default_value = ".env")]
    pub env_file: PathBuf,
    /// Tera templates of units and configuration files.
    #[arg(long, global = true, default_value = "templates")]
    pub templates: PathBuf,
    /// The platform description: its services and what each needs.
    #[arg(long, global = true, default_value = "platform.toml")]
    pub platform: PathBuf,
    /// Take the services' binaries from this folder instead of building the workspace (`build`).
    #[arg(long, global = true)]
    pub binaries: Option<PathBuf>,
    /// Only these hosts (inventory names); repeatable.
    #[arg(long = "limit", global = true, value_name = "HOST")]
    pub limit: Vec<String>,
    /// Print one JSON document on stdout (plan, apply, status); progress stays on stderr.
    /// `docs/provision-json.md` describes it.
    #[arg(long, global = true)]
    pub json: bool,
    /// How many hosts are worked on at once (SSH sessions open together), like Ansible's forks.
    /// `logs --follow` follows every selected host at once whatever this says.
    #[arg(long, global = true, default_value_t = NonZeroUsize::new(DEFAULT_FORKS).expect("non-zero"))]
    pub forks: NonZeroUsize,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show per host what apply would change. Exit 0: nothing; 2: changes; 1: error.
    Plan,
    /// Converge every host; exit 0 when all converged, 1 otherwise.
    Apply {
        /// Update the services of this many hosts at a time, batch after batch, each restarted
        /// service healthy and ready before the next batch (a rolling deploy); default: all at
        /// once.
        #[arg(long, value_name = "HOSTS")]
        serial: Option<NonZeroUsize>,
        /// With --serial: how many hosts may fail before the rollout stops (the hosts after
        /// keep what they run).
        #[arg(long, value_name = "HOSTS", default_value_t = 0, requires = "serial")]
        max_fail: usize,
    },
    /// Per host and service: active, healthy, ready, deployed version; billing queue depth and
    /// consumers. Exit 0 when every service is active and healthy, 1 otherwise (a service that
    /// is up but not ready is shown, not failed: its dependencies may be restarting).
    Status,
    /// Build the binaries of the platform's services with the one command plan and apply use, and
    /// print the folder holding them on stdout.
    Build {
        /// Build with the `dev` profile instead of `release`: the build of `cargo test
        /// --workspace`, whose binaries the end-to-end tests run.
        #[arg(long)]
        dev: bool,
    },
    /// Write every file for every host into DIR/<host>/<absolute path>, without any network.
    Render {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// A planned change of the Patroni cluster's primary, through Patroni (`patronictl
    /// switchover`), asked of the first member that answers: the primary stops taking writes,
    /// its replica catches up, and takes over. Exit 0 once Patroni reports it done.
    Switchover {
        /// The member to promote; default: the one Patroni chooses (the synchronous standby).
        #[arg(long, value_name = "HOST")]
        to: Option<String>,
    },
    /// `systemctl stop SERVICE` on the hosts running it.
    Stop { service: String },
    /// `systemctl start SERVICE` on the hosts running it.
    Start { service: String },
    /// `systemctl restart SERVICE` on the hosts running it.
    Restart { service: String },
    /// The service's journal on the hosts running it.
    Logs {
        service: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many past lines to show.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
    },
}

/// The rendered desired state and the settings commands need besides it.
#[derive(Debug)]
struct Loaded {
    hosts: Vec<DesiredHost>,
    /// The billing queue's name (`[settings] queue`), for `status`.
    queue: String,
}

/// Where the desired state comes from (the render half): env file, inventory, binaries (built
/// or taken from `--binaries`, checked for this machine's architecture), templates.
fn load(args: &Args, with_binaries: bool) -> anyhow::Result<Loaded> {
    let platform = Platform::load(&args.platform)?;
    let env = EnvFile::load(&args.env_file, &platform.required_variables())?;
    let inventory = Inventory::load(&args.inventory, &env, &platform)?;
    let binaries = if with_binaries {
        let arch = inventory.settings.target_arch;
        Some(
            BinarySet::locate(
                args.binaries.as_deref(),
                &workspace_dir(),
                &service_names(&platform),
                arch,
            )
            .context("preparing the service binaries")?,
        )
    } else {
        None
    };
    let pki = open_pki(&args.env_file, &inventory)?;
    let hosts = render::desired_hosts(&inventory, &env, &args.templates, binaries.as_ref(), &pki)?;
    Ok(Loaded {
        hosts,
        queue: inventory.settings.queue.clone(),
    })
}

/// The platform CA and every host's certificate, in `pki/` beside the env file: made, or
/// issued again, where needed (each said on stderr; plan then shows the files that change).
fn open_pki(env_file: &Path, inventory: &Inventory) -> anyhow::Result<Pki> {
    let dir = env_file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join(pki::DIR_NAME);
    let hosts = render::tls::certificate_subjects(inventory);
    let (pki, issued) = Pki::open(&dir, &hosts, time::OffsetDateTime::now_utc())?;
    for issued in issued {
        eprintln!("certificate of {}: issued ({})", issued.host, issued.reason);
    }
    Ok(pki)
}

/// The platform's services, which are also their cargo packages and binaries.
fn service_names(platform: &Platform) -> Vec<&str> {
    platform
        .services()
        .iter()
        .map(|service| service.name.as_str())
        .collect()
}

fn run_build(args: &Args, dev: bool) -> anyhow::Result<ExitCode> {
    let platform = Platform::load(&args.platform)?;
    let profile = if dev { Profile::Dev } else { Profile::Release };
    let dir = binaries::build(&workspace_dir(), &service_names(&platform), profile)?;
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The workspace to build: the current directory when it holds the workspace manifest, else
/// the one this binary was built from.
fn workspace_dir() -> PathBuf {
    let here = PathBuf::from(".");
    if here.join("Cargo.toml").is_file() && here.join("provisioner").is_dir() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or(here, Path::to_path_buf)
    }
}

fn render_to_dir(args: &Args, out: &Path) -> anyhow::Result<()> {
    let hosts = selected_hosts(args, false)?.hosts;
    let written = render::render_to_dir(&hosts, out)
        .with_context(|| format!("rendering into {}", out.display()))?;
    eprintln!("{} files written", written.len());
    Ok(())
}

/// Runs the command; the exit code follows the contract (plan: 0/2/1, others 0/1).
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::Render { out } => {
            render_to_dir(args, out)?;
            eprintln!("rendered into {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { dev } => run_build(args, *dev),
        Command::Plan => run_plan(args),
        Command::Apply { serial, max_fail } => run_apply(
            args,
            match serial {
                Some(serial) => Rollout {
                    serial: Some(*serial),
                    max_fail: *max_fail,
                },
                None => Rollout::default(),
            },
        ),
        Command::Status => run_status(args),
        Command::Switchover { to } => run_switchover(args, to.as_deref()),
        Command::Stop { service } => run_systemctl(args, "stop", service),
        Command::Start { service } => run_systemctl(args, "start", service),
        Command::Restart { service } => run_systemctl(args, "restart", service),
        Command::Logs {
            service,
            follow,
            lines,
        } => run_logs(args, service, *follow, *lines),
    }
}

/// The desired hosts kept by `--limit`; an unknown name is an error naming the known ones.
/// Only plan and apply need the binaries (and so, maybe, a release build).
fn selected_hosts(args: &Args, with_binaries: bool) -> anyhow::Result<Loaded> {
    let loaded = load(args, with_binaries)?;
    Ok(Loaded {
        hosts: select(loaded.hosts, &args.limit)?,
        queue: loaded.queue,
    })
}

pub fn select(hosts: Vec<DesiredHost>, limit: &[String]) -> anyhow::Result<Vec<DesiredHost>> {
    if let Some(unknown) = limit
        .iter()
        .find(|name| !hosts.iter().any(|host| &host.name == *name))
    {
        let known: Vec<&str> = hosts.iter().map(|host| host.name.as_str()).collect();
        bail!(
            "--limit {unknown}: no such host in the inventory (hosts: {})",
            known.join(", ")
        );
    }
    Ok(hosts
        .into_iter()
        .filter(|host| limit.is_empty() || limit.contains(&host.name))
        .collect())
}

/// One SSH session per host, opened in parallel; a host that cannot be reached gets its
/// one-line error and the others carry on.
fn connect_all(hosts: &[DesiredHost], forks: NonZeroUsize) -> Vec<Result<SshTransport, String>> {
    let connected = parallel::each(hosts, forks, |host| {
        let connected = SshTransport::connect(&host.name, &host.connection);
        match &connected {
            Ok(transport) if transport.host_key == HostKeyStatus::Recorded => progress(
                &host.name,
                &format!(
                    "first contact: host key recorded in {}",
                    host.connection.known_hosts.display()
                ),
            ),
            Ok(_) => {}
            Err(error) => eprintln!("error: {error}"),
        }
        connected.map_err(|error| error.to_string())
    });
    connected
        .into_iter()
        .map(|result| result.unwrap_or_else(|| Err("connection thread panicked".into())))
        .collect()
}

#[derive(Debug, Serialize)]
struct Document<'a, T> {
    hosts: &'a [T],
}

/// The JSON document `--json` prints for these hosts' reports (`docs/provision-json.md`).
pub fn json_document<T: Serialize>(hosts: &[T]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&Document { hosts })
}

fn print_json<T: Serialize>(hosts: &[T]) -> anyhow::Result<()> {
    let document = json_document(hosts).context("encoding the JSON document")?;
    println!("{document}");
    Ok(())
}

fn run_plan(args: &Args) -> anyhow::Result<ExitCode> {
    let hosts = selected_hosts(args, true)?.hosts;
    let transports = connect_all(&hosts, args.forks);
    let pairs: Vec<(&DesiredHost, &Result<SshTransport, String>)> =
        hosts.iter().zip(&transports).collect();
    let reports: Vec<HostReport> = parallel::each(&pairs, args.forks, |(host, transport)| {
        match transport {
            Err(error) => HostReport::failed_with(&host.name, error),
            Ok(transport) => match facts::gather(transport, host) {
                Ok(facts) => HostReport::from_plan(&plan::plan(host, &facts)),
                Err(error) => HostReport::failed_with(&host.name, error),
            },
        }
    })
    .into_iter()
    .zip(&hosts)
    .map(|(report, host)| report.unwrap_or_else(|| HostReport::failed_with(&host.name, "panicked")))
    .collect();
    if args.json {
        print_json(&reports)?;
    } else {
        print_plan(&reports);
    }
    Ok(if reports.iter().any(|report| report.error.is_some()) {
        ExitCode::from(1)
    } else if reports
        .iter()
        .any(|report| report.changed > 0 || !report.restarted.is_empty())
    {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_plan(reports: &[HostReport]) {
    for report in reports {
        if let Some(error) = &report.error {
            println!("{}: ERROR {error}", report.host);
            continue;
        }
        if report.changes.is_empty() && report.restarted.is_empty() {
            println!("{}: up to date ({} checked)", report.host, report.ok);
            continue;
        }
        println!(
            "{}: {} to change, {} up to date",
            report.host, report.changed, report.ok
        );
        for change in &report.changes {
            println!("  ~ {} {}", apply::kind_name(change.kind), change.target);
            for line in change.detail.lines() {
                println!("      {line}");
            }
        }
        if !report.restarted.is_empty() {
            println!("  would restart: {}", report.restarted.join(", "));
        }
    }
}

fn run_apply(args: &Args, rollout: Rollout) -> anyhow::Result<ExitCode> {
    let hosts = selected_hosts(args, true)?.hosts;
    let transports = connect_all(&hosts, args.forks);
    let pairs: Vec<(&DesiredHost, Result<&dyn Transport, String>)> = hosts
        .iter()
        .zip(&transports)
        .map(|(host, transport)| {
            (
                host,
                transport
                    .as_ref()
                    .map(|t| t as &dyn Transport)
                    .map_err(Clone::clone),
            )
        })
        .collect();
    let reports = apply::apply_all(&pairs, args.forks, rollout);
    if args.json {
        print_json(&reports)?;
    } else {
        print_summary(&reports);
    }
    Ok(
        if reports
            .iter()
            .all(|report| report.failed == 0 && report.error.is_none())
        {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

fn print_summary(reports: &[HostReport]) {
    let width = reports
        .iter()
        .map(|report| report.host.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:>4}  {:>7}  {:>6}  restarted",
        "host", "ok", "changed", "failed"
    );
    for report in reports {
        let mut restarted = report.restarted.join(",");
        if !report.rolled_back.is_empty() {
            restarted.push_str(&format!(" (rolled back: {})", report.rolled_back.join(",")));
        }
        println!(
            "{:width$}  {:>4}  {:>7}  {:>6}  {}",
            report.host,
            report.ok,
            report.changed,
            report.failed,
            if restarted.is_empty() {
                "-"
            } else {
                &restarted
            }
        );
    }
    for report in reports {
        if let Some(error) = &report.error {
            println!("{}: {error}", report.host);
        }
    }
}

fn run_status(args: &Args) -> anyhow::Result<ExitCode> {
    let Loaded { hosts, queue } = selected_hosts(args, false)?;
    let transports = connect_all(&hosts, args.forks);
    let pairs: Vec<(&DesiredHost, &Result<SshTransport, String>)> =
        hosts.iter().zip(&transports).collect();
    let statuses: Vec<HostStatus> =
        parallel::each(&pairs, args.forks, |(host, transport)| match transport {
            Err(error) => HostStatus::failed(&host.name, error),
            Ok(transport) => status::gather(transport, host, &queue)
                .unwrap_or_else(|error| HostStatus::failed(&host.name, error)),
        })
        .into_iter()
        .zip(&hosts)
        .map(|(status, host)| status.unwrap_or_else(|| HostStatus::failed(&host.name, "panicked")))
        .collect();
    let all_fine = statuses.iter().all(|status| {
        status.error.is_none()
            && status
                .cluster
                .as_ref()
                .is_none_or(|cluster| cluster.error.is_none())
            && status
                .services
                .iter()
                .all(|service| service.active && service.healthy)
    });
    if args.json {
        print_json(&statuses)?;
    } else {
        for status in &statuses {
            if let Some(error) = &status.error {
                println!("{}: ERROR {error}", status.host);
                continue;
            }
            println!("{}:", status.host);
            for service in &status.services {
                println!(
                    "  {:10} {:8} {:9} {:7} {}",
                    service.name,
                    if service.active { "active" } else { "inactive" },
                    if service.healthy {
                        "healthy"
                    } else {
                        "unhealthy"
                    },
                    if service.ready { "ready" } else { "unready" },
                    service.version.as_deref().unwrap_or("-")
                );
            }
            if let Some(queue) = &status.queue {
                println!(
                    "  queue {}: {} messages, {} consumers",
                    queue.name, queue.messages, queue.consumers
                );
            }
            match &status.cluster {
                None => {}
                Some(ClusterStatus {
                    error: Some(error), ..
                }) => println!("  patroni: {error}"),
                Some(ClusterStatus { members, .. }) => {
                    println!("  patroni cluster, as this member sees it:");
                    for member in members {
                        println!(
                            "    {:16} {:13} {:10} timeline {:>4} lag {}",
                            member.name,
                            member.role,
                            member.state,
                            member.timeline.map_or("-".to_owned(), |t| t.to_string()),
                            member.lag.map_or("-".to_owned(), |lag| format!("{lag} B"))
                        );
                    }
                }
            }
        }
    }
    Ok(if all_fine {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `patronictl switchover` on the first member of the cluster that can be reached.
fn run_switchover(args: &Args, to: Option<&str>) -> anyhow::Result<ExitCode> {
    let members: Vec<DesiredHost> = load(args, false)?
        .hosts
        .into_iter()
        .filter(|host| host.patroni_member())
        .collect();
    if members.is_empty() {
        bail!(
            "no host of the inventory has the role `patroni`: there is no cluster to switch over"
        );
    }
    if let Some(to) = to {
        if !members.iter().any(|member| member.name == to) {
            let names: Vec<&str> = members.iter().map(|member| member.name.as_str()).collect();
            bail!(
                "--to {to}: not a member of the Patroni cluster (members: {})",
                names.join(", ")
            );
        }
    }
    let command = switchover_command(to);
    let mut unreachable = Vec::new();
    for member in &members {
        let transport = match SshTransport::connect(&member.name, &member.connection) {
            Ok(transport) => transport,
            Err(error) => {
                unreachable.push(format!("{}: {error}", member.name));
                continue;
            }
        };
        progress(&member.name, "patronictl switchover");
        let output = transport.exec(&command, None, true)?;
        print!("{}", output.stdout_text());
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        return Ok(if output.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    bail!(
        "no member of the Patroni cluster could be reached: {}",
        unreachable.join("; ")
    )
}

/// The switchover, run as postgres (who alone reads Patroni's configuration and its REST API's
/// password), without questions.
pub fn switchover_command(to: Option<&str>) -> String {
    let candidate = to.map_or(String::new(), |to| {
        format!(" --candidate {}", shell_quote(to))
    });
    format!(
        "cd / && runuser -u postgres -- patronictl -c {} switchover --force{candidate}",
        crate::render::patroni::PATRONI_CONFIG
    )
}

/// The hosts running `service`, or an error naming the services the inventory knows.
fn hosts_running(args: &Args, service: &str) -> anyhow::Result<Vec<DesiredHost>> {
    let hosts = selected_hosts(args, false)?.hosts;
    let running: Vec<DesiredHost> = hosts
        .iter()
        .filter(|host| host.runs_service(service))
        .cloned()
        .collect();
    if running.is_empty() {
        let known: BTreeSet<&str> = hosts
            .iter()
            .flat_map(|host| &host.services)
            .map(|spec| spec.unit.as_str())
            .collect();
        bail!(
            "no selected host runs {service} (services: {})",
            known.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(running)
}

/// `systemctl VERB SERVICE`; a stop also stops the service's socket where it has one, which
/// would otherwise start it again on the next connection.
pub fn systemctl_command(verb: &str, service: &str) -> String {
    let unit = shell_quote(service);
    if verb == "stop" {
        let socket = shell_quote(&format!("{service}.socket"));
        format!(
            "if systemctl cat {socket} >/dev/null 2>&1; then systemctl stop {socket} {unit}; \
             else systemctl stop {unit}; fi"
        )
    } else {
        format!("systemctl {verb} {unit}")
    }
}

fn run_systemctl(args: &Args, verb: &str, service: &str) -> anyhow::Result<ExitCode> {
    let hosts = hosts_running(args, service)?;
    let transports = connect_all(&hosts, args.forks);
    let mut all_ok = true;
    for (host, transport) in hosts.iter().zip(&transports) {
        let Ok(transport) = transport else {
            all_ok = false;
            continue;
        };
        match transport.run(&systemctl_command(verb, service), None, true) {
            Ok(_) => progress(&host.name, &format!("systemctl {verb} {service}: done")),
            Err(error) => {
                eprintln!("error: {error}");
                all_ok = false;
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prefixes every line with the host's name when several hosts stream at once.
struct Prefixed {
    prefix: String,
    pending: Vec<u8>,
}

impl Write for Prefixed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(self.prefix.as_bytes())?;
            stdout.write_all(&line)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn run_logs(args: &Args, service: &str, follow: bool, lines: u32) -> anyhow::Result<ExitCode> {
    let hosts = hosts_running(args, service)?;
    // A follow never ends: capped, the hosts past the cap would never be shown.
    let forks = if follow {
        NonZeroUsize::new(hosts.len()).unwrap_or(args.forks)
    } else {
        args.forks
    };
    let transports = connect_all(&hosts, forks);
    let command = format!(
        "journalctl -u {} -n {lines} --no-pager{}",
        shell_quote(service),
        if follow { " -f" } else { "" }
    );
    let several = hosts.len() > 1;
    let pairs: Vec<(&DesiredHost, &Result<SshTransport, String>)> =
        hosts.iter().zip(&transports).collect();
    let results = parallel::each(&pairs, forks, |(host, transport)| {
        let Ok(transport) = transport else {
            return false;
        };
        let mut out: Box<dyn Write> = if several {
            Box::new(Prefixed {
                prefix: format!("[{}] ", host.name),
                pending: Vec::new(),
            })
        } else {
            Box::new(std::io::stdout())
        };
        match transport.exec_streaming(&command, true, &mut out) {
            Ok(status) => status == 0,
            Err(error) => {
                eprintln!("error: {error}");
                false
            }
        }
    });
    Ok(if results.iter().all(|ok| *ok == Some(true)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
