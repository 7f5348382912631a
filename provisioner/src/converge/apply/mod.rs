//! Converging hosts: executes each host's plan, hosts in parallel, PostgreSQL and RabbitMQ on
//! every host before any platform service; then restarts only what changed, waits for health
//! and puts the previous binary back when a new one is unhealthy.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;

pub mod commands;
pub mod report;

pub use commands::*;
pub use report::*;

use crate::converge::facts::{self, FactsError, HostFacts};
use crate::converge::parallel;
use crate::converge::plan::{self, Action, Change, ChangeKind, HostPlan, Phase};
use crate::converge::scram;
use crate::converge::transport::{shell_quote, Transport, TransportError};
use crate::desired::{resolve_pg_version_in, DesiredHost, Handler, ServiceSpec};
use crate::render::patroni::ETCD_SETTINGS;
use crate::render::platform::Component;

/// Why one step of apply failed on a host.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error("{host}: PostgreSQL is installed but /etc/postgresql holds no version directory")]
    NoPostgresVersion { host: String },
    #[error("{host}: still not installed after apt-get install: {}", packages.join(" "))]
    PackagesStillMissing { host: String, packages: Vec<String> },
    #[error("{host}: {message}")]
    Other { host: String, message: String },
}

/// One host being converged: its connection, desired state, current plan and report so far.
pub struct HostRun<'a> {
    pub transport: &'a dyn Transport,
    pub desired: &'a DesiredHost,
    plan: HostPlan,
    pub report: HostReport,
    /// Binaries pushed in this run, by service: only those can be rolled back.
    pushed: BTreeSet<String>,
    /// Services whose socket unit was rewritten in this run: their restart rebinds the socket.
    sockets_written: BTreeSet<String>,
    /// The PostgreSQL version the last facts found, filled into the files that name it.
    pg_version: Option<String>,
}

impl std::fmt::Debug for HostRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRun")
            .field("host", &self.desired.name)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl<'a> HostRun<'a> {
    pub fn new(transport: &'a dyn Transport, desired: &'a DesiredHost) -> Self {
        Self {
            transport,
            desired,
            plan: HostPlan::default(),
            report: HostReport::new(&desired.name),
            pushed: BTreeSet::new(),
            sockets_written: BTreeSet::new(),
            pg_version: None,
        }
    }

    fn host(&self) -> &str {
        &self.desired.name
    }

    fn gather(&mut self) -> Result<(HostFacts, HostPlan), ApplyError> {
        let facts = facts::gather(self.transport, self.desired)?;
        let plan = plan::plan(self.desired, &facts);
        self.pg_version = facts.pg_version.clone();
        Ok((facts, plan))
    }

    /// Phase 1: facts, packages (then facts again and a new plan, since installing PostgreSQL
    /// creates its version directory and its user), users, files, PostgreSQL objects, and the
    /// plan's handlers of this phase (RabbitMQ's restart among them).
    pub fn backing_phase(&mut self) -> Result<(), ApplyError> {
        let (_, mut plan) = self.gather()?;
        let checked = plan.checked;
        let packages: Vec<Change> = plan
            .changes
            .iter()
            .filter(|change| change.kind == ChangeKind::Package)
            .cloned()
            .collect();
        if let Some(Action::InstallPackages(names)) = packages.first().map(|change| &change.action)
        {
            progress(self.host(), &format!("installing {}", names.join(" ")));
            self.transport.run(&install_command(names), None, true)?;
            self.record_all(&packages);
            let (facts, replanned) = self.gather()?;
            if facts.pg_version.is_none()
                && self
                    .desired
                    .files
                    .iter()
                    .any(|file| plan::unresolved(&file.path))
            {
                return Err(ApplyError::NoPostgresVersion {
                    host: self.host().to_string(),
                });
            }
            // apt-get succeeded, yet dpkg does not list the package: going on would report it
            // "changed" again on every run and leave its services unconfigured.
            let still_missing: Vec<String> = replanned
                .changes
                .iter()
                .filter(|change| change.kind == ChangeKind::Package)
                .map(|change| change.target.clone())
                .collect();
            if !still_missing.is_empty() {
                return Err(ApplyError::PackagesStillMissing {
                    host: self.host().to_string(),
                    packages: still_missing,
                });
            }
            plan = replanned;
        }
        self.report.ok = checked.saturating_sub(plan.changes.len() + self.report.changed);
        self.plan = plan;
        if self.plan.is_empty() {
            progress(self.host(), "nothing to change");
        }
        self.run_phase(Phase::Backing)
    }

    /// Between the phases, one host at a time: RabbitMQ's objects, or the node joining its
    /// cluster; on a Patroni member, once the cluster has a running leader and this member runs
    /// too, the roles and databases if it is the primary (asked again now: the plan was made
    /// before the backing phase started the cluster).
    pub fn broker_phase(&mut self) -> Result<(), ApplyError> {
        let member = self.desired.patroni_member();
        if member {
            progress(
                self.host(),
                "waiting for the Patroni cluster's leader and this member",
            );
            let waited = self
                .transport
                .exec(&patroni_wait_command(self.host()), None, true)?;
            if !waited.success() {
                return Err(ApplyError::Other {
                    host: self.host().to_string(),
                    message: format!(
                        "the Patroni cluster has no running leader, or this member does not run, after {PATRONI_WAIT_SECS} s{}",
                        self.last_log_lines("patroni")
                    ),
                });
            }
            let (_, replanned) = self.gather()?;
            self.plan
                .changes
                .retain(|change| change.kind != ChangeKind::Postgres);
            self.plan.changes.extend(
                replanned
                    .changes
                    .into_iter()
                    .filter(|change| change.kind == ChangeKind::Postgres),
            );
        }
        self.run_phase(Phase::Broker)
    }

    /// Phase 2: binaries, units and env files, then the plan's handlers of this phase
    /// (daemon-reload, enable, (re)start with health checks and rollback).
    pub fn services_phase(&mut self) -> Result<(), ApplyError> {
        self.run_phase(Phase::Services)
    }

    /// Makes the plan's changes of `phase`, then runs the plan's handlers of `phase`, in the
    /// plan's order: apply decides nothing the plan did not list.
    fn run_phase(&mut self, phase: Phase) -> Result<(), ApplyError> {
        let changes: Vec<Change> = self
            .plan
            .changes
            .iter()
            .filter(|change| change.phase == phase)
            .cloned()
            .collect();
        for change in &changes {
            self.execute(change)?;
            self.record(change);
            match &change.action {
                Action::PushBinary(index) => {
                    self.pushed
                        .insert(self.desired.binaries[*index].service.clone());
                }
                Action::WriteFile { file, .. } => {
                    let path = &self.desired.files[*file].path;
                    if let Some(service) = self
                        .desired
                        .services
                        .iter()
                        .find(|service| service.socket.as_ref() == Some(path))
                    {
                        self.sockets_written.insert(service.unit.clone());
                    }
                }
                _ => {}
            }
        }
        let handlers: Vec<Handler> = self.plan.steps_in(phase).cloned().collect();
        for handler in &handlers {
            // A platform service's restart waits for its health and may roll back.
            let service = match handler {
                Handler::Restart(unit) => self
                    .desired
                    .services
                    .iter()
                    .find(|service| &service.unit == unit)
                    .cloned(),
                _ => None,
            };
            match service {
                Some(service) => self.restart_and_check(&service),
                None => self.run_handler(handler)?,
            }
        }
        Ok(())
    }

    fn record(&mut self, change: &Change) {
        progress(
            self.host(),
            &format!("changed {} {}", kind_name(change.kind), change.target),
        );
        self.report.changed += 1;
        self.report.changes.push(ChangeReport::from(change));
    }

    fn record_all(&mut self, changes: &[Change]) {
        for change in changes {
            self.record(change);
        }
    }

    fn run_handler(&self, handler: &Handler) -> Result<(), ApplyError> {
        let command = match handler {
            Handler::DaemonReload => "systemctl daemon-reload".to_string(),
            Handler::Restart(unit) if unit == Component::Etcd.unit() => {
                etcd_restart_command(ETCD_SETTINGS)
            }
            Handler::Restart(unit) => format!("systemctl restart {}", shell_quote(unit)),
            Handler::Reload(unit) => format!("systemctl reload-or-restart {}", shell_quote(unit)),
            Handler::Stop(unit) => format!("systemctl stop {}", shell_quote(unit)),
        };
        progress(self.host(), &command);
        self.transport.run(&command, None, true)?;
        Ok(())
    }

    /// Restarts a platform service and waits for its health URL; a new binary that does not
    /// become healthy is replaced by the previous one, which must then be healthy again.
    /// In a rolling deploy, before the next batch: every service restarted here (and not rolled
    /// back) must also be ready, i.e. reach what it depends on. One that is not counts as this
    /// host's failure; nothing is rolled back for it (its dependency may be what is down).
    pub fn wait_ready_after_restarts(&mut self) {
        let restarted: Vec<(String, String, String, bool)> = self
            .report
            .restarted
            .iter()
            .filter(|unit| !self.report.rolled_back.contains(unit))
            .filter_map(|unit| {
                self.desired
                    .services
                    .iter()
                    .find(|service| &service.unit == unit)
                    .map(|service| {
                        (
                            service.unit.clone(),
                            service.ready_url.clone(),
                            service.curl_args(&service.ready_url),
                            service.tls.is_some(),
                        )
                    })
            })
            .collect();
        for (unit, ready_url, curl_args, as_root) in restarted {
            if self.wait_healthy(&curl_args, as_root) {
                progress(self.host(), &format!("{unit} ready"));
            } else {
                let message = format!(
                    "{unit} is healthy but not ready at {ready_url} after {HEALTH_WAIT_SECS} s: the rollout stops here"
                );
                progress(self.host(), &message);
                self.report.failed += 1;
                self.report.append_error(message);
            }
        }
    }

    fn restart_and_check(&mut self, service: &ServiceSpec) {
        let (unit, health_url) = (service.unit.as_str(), service.health_url.as_str());
        let health_args = service.curl_args(health_url);
        let socket = match &service.socket {
            None => Socket::None,
            Some(_) if self.sockets_written.contains(unit) => Socket::Rebound,
            Some(_) => Socket::Kept,
        };
        let host = self.host().to_string();
        progress(&host, &format!("restarting {unit}"));
        let restarted = self
            .transport
            .run(&restart_command(unit, socket), None, true);
        self.report.restarted.push(unit.to_string());
        let as_root = service.tls.is_some();
        let healthy = restarted.is_ok() && self.wait_healthy(&health_args, as_root);
        if healthy {
            progress(&host, &format!("{unit} healthy"));
            return;
        }
        let why = match &restarted {
            Err(error) => error.to_string(),
            Ok(_) => format!("{unit} not healthy at {health_url} after {HEALTH_WAIT_SECS} s"),
        };
        self.report.failed += 1;
        let binary = self
            .desired
            .binaries
            .iter()
            .find(|binary| binary.service == unit)
            .map(|binary| binary.remote_path.clone());
        let message = match binary.filter(|_| self.pushed.contains(unit)) {
            Some(path) => {
                progress(&host, &format!("{why}; rolling back to {path}.previous"));
                let rolled = self
                    .transport
                    .run(&rollback_command(&path, unit, socket), None, true)
                    .is_ok()
                    && self.wait_healthy(&health_args, as_root);
                if rolled {
                    self.report.rolled_back.push(unit.to_string());
                    format!("{why}: rolled back to the previous binary, which is healthy again")
                } else {
                    format!("{why}: rolled back to the previous binary, still not healthy")
                }
            }
            None => format!("{why}{}", self.last_log_lines(unit)),
        };
        progress(&host, &message);
        self.report.append_error(message);
    }

    /// `curl_args`: [`ServiceSpec::curl_args`]. `as_root` when they name a key only the service
    /// and root may read (a service that serves HTTPS); else as the SSH user.
    fn wait_healthy(&self, curl_args: &str, as_root: bool) -> bool {
        self.transport
            .exec(&health_command(curl_args), None, as_root)
            .is_ok_and(|output| output.success())
    }

    fn last_log_lines(&self, unit: &str) -> String {
        let command = format!("journalctl -u {} -n 3 --no-pager -o cat", shell_quote(unit));
        match self.transport.exec(&command, None, true) {
            Ok(output) if output.success() && !output.stdout.is_empty() => {
                format!(
                    " (last log lines: {})",
                    output.stdout_text().trim().replace('\n', " | ")
                )
            }
            _ => String::new(),
        }
    }

    fn execute(&mut self, change: &Change) -> Result<(), ApplyError> {
        let transport = self.transport;
        let desired = self.desired;
        match &change.action {
            // Installed at the start of phase 1.
            Action::InstallPackages(_) => Ok(()),
            Action::CreateUser(user) => {
                let user = shell_quote(user);
                transport.run(
                    &format!("id -u {user} >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {user}"),
                    None,
                    true,
                )?;
                Ok(())
            }
            Action::WriteFile { file, path } => {
                let file = &desired.files[*file];
                if plan::unresolved(path) {
                    return Err(ApplyError::NoPostgresVersion {
                        host: self.host().to_string(),
                    });
                }
                let bytes = resolve_pg_version_in(file.content.bytes(), self.pg_version.as_deref());
                transport.write_file_atomic(path, &bytes, file.mode, &file.owner, &file.group)?;
                Ok(())
            }
            Action::CreateRole(_)
            | Action::SetRolePassword(_)
            | Action::CreateDatabase(_)
            | Action::SetDatabaseOwner(_) => {
                let sql = self.postgres_sql(&change.action)?;
                transport.run(PSQL, Some(sql.as_bytes()), true)?;
                Ok(())
            }
            Action::AddVhost
            | Action::AddRabbitUser
            | Action::SetRabbitPassword
            | Action::SetRabbitTags
            | Action::SetRabbitPermissions
            | Action::DeleteGuest
            | Action::JoinCluster => self.rabbitmq(&change.action),
            Action::PushBinary(index) => {
                let binary = &desired.binaries[*index];
                let bytes =
                    std::fs::read(&binary.local_path).map_err(|error| ApplyError::Other {
                        host: self.host().to_string(),
                        message: format!("reading {}: {error}", binary.local_path.display()),
                    })?;
                progress(
                    self.host(),
                    &format!(
                        "uploading {} ({})",
                        binary.remote_path,
                        human_size(bytes.len())
                    ),
                );
                transport.run(&push_binary_script(&binary.remote_path), Some(&bytes), true)?;
                Ok(())
            }
            Action::EnableService(unit) => {
                transport.run(
                    &format!(
                        "systemctl enable {}",
                        shell_quote(&format!("{unit}.service"))
                    ),
                    None,
                    true,
                )?;
                Ok(())
            }
            // Started by the restart handler the plan lists for it, after daemon-reload.
            Action::StartService(_) | Action::RestartService(_) => Ok(()),
        }
    }

    /// An error for a change the desired state cannot carry out: plan only lists PostgreSQL
    /// and RabbitMQ changes for hosts with those roles, so this is a bug, never a no-op.
    fn inconsistent(&self, action: &Action, missing: &str) -> ApplyError {
        ApplyError::Other {
            host: self.host().to_string(),
            message: format!("{action:?}: no such {missing} change in the desired state"),
        }
    }

    fn postgres_sql(&self, action: &Action) -> Result<String, ApplyError> {
        let Some(postgres) = &self.desired.postgres else {
            return Err(self.inconsistent(action, "PostgreSQL"));
        };
        let verifier = |password: &str| {
            scram::make_verifier(password).map_err(|error| ApplyError::Other {
                host: self.host().to_string(),
                message: format!("cannot generate a salt: {error}"),
            })
        };
        postgres_sql(postgres, action, verifier)?
            .ok_or_else(|| self.inconsistent(action, "PostgreSQL"))
    }

    fn rabbitmq(&self, action: &Action) -> Result<(), ApplyError> {
        let Some(rabbitmq) = &self.desired.rabbitmq else {
            return Err(self.inconsistent(action, "RabbitMQ"));
        };
        let (command, stdin) = rabbitmq_command(rabbitmq, action)
            .ok_or_else(|| self.inconsistent(action, "RabbitMQ"))?;
        self.transport.run(&command, stdin, true)?;
        Ok(())
    }
}

/// How the services phase rolls out over the hosts, like Ansible's `serial` and
/// `max_fail_percentage` (as a count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    /// Hosts whose services are updated at once, batch after batch in the inventory's order;
    /// `None`: every host at once.
    pub serial: Option<NonZeroUsize>,
    /// Hosts whose services phase may fail before the rollout stops; the hosts of the batches
    /// after that keep what they run. Hosts that failed the first phase do not count.
    pub max_fail: usize,
}

impl Default for Rollout {
    /// Every host at once; a host's failure does not stop the others.
    fn default() -> Self {
        Self {
            serial: None,
            max_fail: usize::MAX,
        }
    }
}

/// A run that ended in a report: its host failed, or was never reached.
type Run<'a> = Result<HostRun<'a>, Box<HostReport>>;

/// Converges every host: phase 1 (firewall, databases and broker) on all hosts in parallel, so
/// every database and broker is ready before any service restarts; RabbitMQ's objects, and the
/// nodes that are not in their cluster joining it, one host at a time; then phase 2 (binaries, units,
/// env files, restarts with health checks and rollback) batch by batch as `rollout` says, each
/// batch in parallel and, with `serial`, its restarted services ready before the next batch,
/// stopping once more hosts than `rollout.max_fail` failed. `hosts` holds a
/// connection per host, or the one-line error of connecting to it.
pub fn apply_all(
    hosts: &[(&DesiredHost, Result<&dyn Transport, String>)],
    forks: NonZeroUsize,
    rollout: Rollout,
) -> Vec<HostReport> {
    let mut runs: Vec<Run<'_>> = hosts
        .iter()
        .map(|(desired, transport)| match transport {
            Ok(transport) => Ok(HostRun::new(*transport, desired)),
            Err(error) => Err(Box::new(HostReport::failed_with(&desired.name, error))),
        })
        .collect();

    run_phase(
        &mut runs.iter_mut().collect::<Vec<_>>(),
        Phase::Backing,
        forks,
    );
    // One host at a time, in the inventory's order: the cluster's first node has its objects
    // before the others join it, and two nodes never join at once.
    run_phase(
        &mut runs.iter_mut().collect::<Vec<_>>(),
        Phase::Broker,
        NonZeroUsize::MIN,
    );

    let pending: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].is_ok()).collect();
    let batch = rollout
        .serial
        .map_or(pending.len().max(1), NonZeroUsize::get);
    let mut failed = 0;
    let mut stopped_after: Option<usize> = None;
    for indexes in pending.chunks(batch) {
        if let Some(count) = stopped_after {
            for &index in indexes {
                if let Ok(host_run) = &mut runs[index] {
                    progress(host_run.host(), "not updated: the rollout stopped");
                    let mut report = std::mem::take(&mut host_run.report);
                    report.append_error(format!(
                        "not updated: the rollout stopped after {count} host(s) failed"
                    ));
                    runs[index] = Err(Box::new(report));
                }
            }
            continue;
        }
        let mut batch_runs: Vec<&mut Run<'_>> = runs
            .iter_mut()
            .enumerate()
            .filter(|(index, _)| indexes.contains(index))
            .map(|(_, run)| run)
            .collect();
        run_phase(&mut batch_runs, Phase::Services, forks);
        // The next batch waits until the services of this one also reach their dependencies.
        if rollout.serial.is_some() {
            parallel::each_mut(&mut batch_runs, forks, |run| {
                if let Ok(host_run) = &mut **run {
                    if host_run.report.failed == 0 {
                        host_run.wait_ready_after_restarts();
                    }
                }
            });
        }
        failed += batch_runs
            .iter()
            .filter(|run| match run {
                Ok(host_run) => host_run.report.failed > 0,
                Err(_) => true,
            })
            .count();
        if failed > rollout.max_fail {
            stopped_after = Some(failed);
        }
    }
    runs.into_iter()
        .map(|run| match run {
            Ok(host_run) => host_run.report,
            Err(report) => *report,
        })
        .collect()
}

/// Runs `phase` on every run still going, at most `forks` at once; a failure ends that run.
fn run_phase(runs: &mut [&mut Run<'_>], phase: Phase, forks: NonZeroUsize) {
    let outcomes = parallel::each_mut(runs, forks, |run| {
        let Ok(host_run) = &mut **run else { return };
        let result = match phase {
            Phase::Backing => host_run.backing_phase(),
            Phase::Broker => host_run.broker_phase(),
            Phase::Services => host_run.services_phase(),
        };
        if let Err(error) = result {
            progress(host_run.host(), &format!("failed: {error}"));
            let mut report = std::mem::take(&mut host_run.report);
            report.failed += 1;
            report.append_error(error.to_string());
            **run = Err(Box::new(report));
        }
    });
    for (run, outcome) in runs.iter_mut().zip(outcomes) {
        if outcome.is_none() {
            if let Ok(host_run) = &mut **run {
                let mut report = std::mem::take(&mut host_run.report);
                report.failed += 1;
                report.append_error("panicked".to_owned());
                **run = Err(Box::new(report));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::converge::facts::HostFacts;
    use crate::converge::transport::fake::FakeTransport;
    use crate::desired::Connection;

    /// A host with neither PostgreSQL nor RabbitMQ (a gateway host).
    fn without_backing_services() -> DesiredHost {
        DesiredHost {
            name: "gateway-vm".into(),
            connection: Connection {
                address: "127.0.0.1".into(),
                port: 22,
                user: "vagrant".into(),
                private_key: "/nonexistent/key".into(),
                sudo: true,
                known_hosts: "/nonexistent/known_hosts".into(),
                connect_timeout: std::time::Duration::from_secs(5),
            },
            packages: Vec::new(),
            system_users: Vec::new(),
            postgres: None,
            rabbitmq: None,
            files: Vec::new(),
            binaries: Vec::new(),
            services: Vec::new(),
            host_units: Vec::new(),
        }
    }

    #[test]
    fn without_the_roles_there_is_nothing_to_do_and_a_stray_change_is_an_error_for_both() {
        let desired = without_backing_services();
        let planned = plan::plan(&desired, &HostFacts::default());
        assert!(planned.is_empty(), "{:?}", planned.changes);

        let fake = FakeTransport::new("gateway-vm");
        let mut run = HostRun::new(&fake, &desired);
        for (kind, action) in [
            (ChangeKind::Postgres, Action::CreateRole(0)),
            (ChangeKind::Rabbitmq, Action::AddVhost),
        ] {
            let change = Change {
                kind,
                target: "x".into(),
                detail: String::new(),
                action: action.clone(),
                phase: Phase::Backing,
                handlers: Vec::new(),
            };
            let error = run
                .execute(&change)
                .expect_err("inconsistent desired state");
            assert!(
                error.to_string().starts_with("gateway-vm: "),
                "{action:?}: {error}"
            );
        }
        assert!(fake.calls().is_empty(), "{}", fake.transcript());
    }

    #[test]
    fn sizes_in_progress_lines_use_the_unit_that_fits() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(612_000), "597.7 KiB");
        assert_eq!(human_size(9 * 1024 * 1024 + 512 * 1024), "9.5 MiB");
    }
}
