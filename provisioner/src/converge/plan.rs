//! The difference between a host's desired state and its facts: a pure function, so what
//! changes and what restarts is tested without a network. apply executes exactly this list.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use similar::TextDiff;

use crate::converge::facts::{HostFacts, PatroniFact};
use crate::desired::{
    resolve_pg_version, resolve_pg_version_in, sha256_hex, DesiredFile, DesiredHost, FileContent,
    Handler, PG_VERSION_PLACEHOLDER,
};
use crate::pki;

/// The `kind` of a change in the JSON document of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    File,
    Binary,
    Package,
    Postgres,
    Rabbitmq,
    Unit,
    Service,
    User,
}

/// What apply does for one change; secrets are looked up in the desired state, never copied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    InstallPackages(Vec<String>),
    CreateUser(String),
    /// `file` indexes [`DesiredHost::files`]; `path` has the PostgreSQL version filled in.
    WriteFile {
        file: usize,
        path: String,
    },
    /// Indexes [`crate::desired::PostgresState::roles`].
    CreateRole(usize),
    SetRolePassword(usize),
    /// Indexes [`crate::desired::PostgresState::databases`].
    CreateDatabase(usize),
    SetDatabaseOwner(usize),
    AddVhost,
    AddRabbitUser,
    SetRabbitPassword,
    SetRabbitTags,
    SetRabbitPermissions,
    DeleteGuest,
    /// This node is not in its cluster: reset it and join the seed's (then take replicas of the
    /// quorum queues).
    JoinCluster,
    /// Indexes [`DesiredHost::binaries`].
    PushBinary(usize),
    EnableService(String),
    StartService(String),
    /// A running service older than a file that restarts it: restarted by its handler.
    RestartService(String),
}

/// When an action runs: databases and the broker's configuration on every host first, then the
/// broker's objects and cluster membership one host at a time, then the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Packages, users, PostgreSQL and RabbitMQ configuration and objects.
    Backing,
    /// RabbitMQ's vhost, users, permissions and cluster membership: once the backing phase's
    /// restarts made its configuration (a new Erlang cookie above all) take effect, one host at a
    /// time, so that the cluster's first node has them before the others join it.
    Broker,
    /// Binaries, units, env files and the platform services themselves.
    Services,
}

#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub target: String,
    /// A unified diff for text files, checksums for binaries, a sentence otherwise; never a secret.
    pub detail: String,
    pub action: Action,
    pub phase: Phase,
    /// What this change triggers once its phase's changes are made (a file's `on_change`, the
    /// restart of a changed binary's service, the start of a unit that is not running).
    pub handlers: Vec<Handler>,
}

/// One handler as apply runs it: after the changes of `phase`, in the order of
/// [`HostPlan::steps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerStep {
    pub phase: Phase,
    pub handler: Handler,
}

/// Everything that differs on one host, and the handlers those differences trigger.
#[derive(Debug, Clone, Default)]
pub struct HostPlan {
    pub host: String,
    pub changes: Vec<Change>,
    /// Deduplicated and ordered: one daemon-reload, one restart per unit, no reload of a unit
    /// that restarts anyway.
    pub handlers: BTreeSet<Handler>,
    /// [`Self::handlers`] as apply runs them, once per phase whose changes trigger them: a
    /// daemon-reload asked by the firewall's unit (backing) and by a service's unit (services)
    /// runs in both, since the service's unit file is only written in the second phase. In each
    /// phase: daemon-reload, reloads (of units not also restarted), platform services in start
    /// order, other restarts. Handlers of platform services always wait for the services phase.
    pub steps: Vec<HandlerStep>,
    /// Platform services to (re)start, in the host's start order: their binary or configuration
    /// changed, or they are not running. The same as the services' restarts in [`Self::steps`].
    pub restarts: Vec<String>,
    /// How many things were compared (the "ok" column counts those that needed nothing).
    pub checked: usize,
}

impl HostPlan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.restarts.is_empty()
    }

    pub fn unchanged(&self) -> usize {
        self.checked.saturating_sub(self.changes.len())
    }
}

/// Compares the desired state with the facts.
pub fn plan(desired: &DesiredHost, facts: &HostFacts) -> HostPlan {
    let mut plan = HostPlan {
        host: desired.name.clone(),
        ..HostPlan::default()
    };

    plan_packages(desired, facts, &mut plan);
    plan_users(desired, facts, &mut plan);
    for (index, file) in desired.files.iter().enumerate() {
        plan_file(index, file, desired, facts, &mut plan);
    }
    plan_postgres(desired, facts, &mut plan);
    plan_rabbitmq(desired, facts, &mut plan);
    plan_binaries(desired, facts, &mut plan);

    plan_host_units(desired, facts, &mut plan);
    for service in &desired.services {
        plan.checked += 2;
        let unit = facts.units.get(&service.unit).copied().unwrap_or_default();
        if !unit.enabled {
            plan.push(
                ChangeKind::Service,
                &service.unit,
                "enable at boot".into(),
                Action::EnableService(service.unit.clone()),
                Phase::Services,
            );
        }
        if !unit.active {
            // Started by its restart handler, after daemon-reload, and health-checked.
            plan.push_triggering(
                ChangeKind::Service,
                &service.unit,
                "start (not running)".into(),
                Action::StartService(service.unit.clone()),
                Phase::Services,
                vec![Handler::Restart(service.unit.clone())],
            );
        }
    }

    plan_lost_restarts(desired, facts, &mut plan);

    plan.steps = handler_steps(desired, &plan.changes);
    plan.handlers = plan.steps.iter().map(|step| step.handler.clone()).collect();
    plan.restarts = plan
        .steps
        .iter()
        .filter_map(|step| match &step.handler {
            Handler::Restart(unit) if desired.runs_service(unit) => Some(unit.clone()),
            _ => None,
        })
        .collect();
    plan
}

impl HostPlan {
    fn push(
        &mut self,
        kind: ChangeKind,
        target: &str,
        detail: String,
        action: Action,
        phase: Phase,
    ) {
        self.push_triggering(kind, target, detail, action, phase, Vec::new());
    }

    fn push_triggering(
        &mut self,
        kind: ChangeKind,
        target: &str,
        detail: String,
        action: Action,
        phase: Phase,
        handlers: Vec<Handler>,
    ) {
        self.changes.push(Change {
            kind,
            target: target.to_string(),
            detail,
            action,
            phase,
            handlers,
        });
    }

    /// The handlers apply runs after the changes of `phase`, in order.
    pub fn steps_in(&self, phase: Phase) -> impl Iterator<Item = &Handler> {
        self.steps
            .iter()
            .filter(move |step| step.phase == phase)
            .map(|step| &step.handler)
    }
}

/// Orders the handlers the changes trigger into [`HostPlan::steps`], each once per phase.
fn handler_steps(desired: &DesiredHost, changes: &[Change]) -> Vec<HandlerStep> {
    let mut by_phase: BTreeMap<Phase, BTreeSet<Handler>> = BTreeMap::new();
    for change in changes {
        for handler in &change.handlers {
            // A platform service restarts once, health-checked, after its files and binary.
            let phase = match handler {
                Handler::Restart(unit) | Handler::Reload(unit) if desired.runs_service(unit) => {
                    Phase::Services
                }
                _ => change.phase,
            };
            by_phase.entry(phase).or_default().insert(handler.clone());
        }
    }
    let mut steps = Vec::new();
    for (phase, handlers) in by_phase {
        let restarted = |unit: &str| handlers.contains(&Handler::Restart(unit.to_string()));
        let daemon_reload = handlers
            .contains(&Handler::DaemonReload)
            .then_some(Handler::DaemonReload);
        // Before anything starts: what stops holds what a restart may need (a port).
        let stops = handlers
            .iter()
            .filter(|handler| matches!(handler, Handler::Stop(_)));
        // A restart already reloads the configuration.
        let reloads = handlers
            .iter()
            .filter(|handler| matches!(handler, Handler::Reload(unit) if !restarted(unit)));
        let services = desired
            .services
            .iter()
            .filter(|service| restarted(&service.unit))
            .map(|service| Handler::Restart(service.unit.clone()));
        let others = handlers.iter().filter(
            |handler| matches!(handler, Handler::Restart(unit) if !desired.runs_service(unit)),
        );
        steps.extend(
            daemon_reload
                .into_iter()
                .chain(stops.cloned())
                .chain(reloads.cloned())
                .chain(services)
                .chain(others.cloned())
                .map(|handler| HandlerStep { phase, handler }),
        );
    }
    steps
}

/// A running unit (a platform service, or a daemon such as RabbitMQ) whose unit, env file,
/// configuration or binary was written after its process started missed its restart (an apply that
/// died between writing and restarting, Ansible's lost handler): it is restarted now. A file about
/// to be rewritten restarts it anyway, so only files in place count.
fn plan_lost_restarts(desired: &DesiredHost, facts: &HostFacts, plan: &mut HostPlan) {
    for unit in desired.restarted_units() {
        let Some(started) = facts.started.get(unit) else {
            continue;
        };
        let restart = Handler::Restart(unit.to_owned());
        if plan
            .changes
            .iter()
            .any(|change| change.handlers.contains(&restart))
        {
            continue;
        }
        let newer: Vec<&str> = desired
            .restart_inputs(unit)
            .filter(|path| {
                facts
                    .modified
                    .get(*path)
                    .is_some_and(|written| written > started)
            })
            .collect();
        plan.checked += 1;
        if !newer.is_empty() {
            plan.push_triggering(
                ChangeKind::Service,
                unit,
                format!(
                    "restart: the running process started before {} was written (a restart was lost)",
                    newer.join(", ")
                ),
                Action::RestartService(unit.to_owned()),
                // A daemon's restart belongs with its configuration, before any service.
                if desired.runs_service(unit) {
                    Phase::Services
                } else {
                    Phase::Backing
                },
                vec![restart],
            );
        }
    }
}

fn plan_packages(desired: &DesiredHost, facts: &HostFacts, plan: &mut HostPlan) {
    plan.checked += desired.packages.len();
    let missing: Vec<String> = desired
        .packages
        .iter()
        .filter(|package| !facts.packages.contains(*package))
        .cloned()
        .collect();
    if !missing.is_empty() {
        // One change per package for the report, one action installing them all.
        for package in &missing {
            plan.push(
                ChangeKind::Package,
                package,
                "install".into(),
                Action::InstallPackages(missing.clone()),
                Phase::Backing,
            );
        }
    }
}

fn plan_users(desired: &DesiredHost, facts: &HostFacts, plan: &mut HostPlan) {
    plan.checked += desired.system_users.len();
    for user in &desired.system_users {
        if !facts.users.contains(user) {
            plan.push(
                ChangeKind::User,
                user,
                "create system user (no login, no home)".into(),
                Action::CreateUser(user.clone()),
                Phase::Backing,
            );
        }
    }
}

/// The provisioner's own units (the firewall): enabled, and started through a handler when not
/// running, in the backing phase so they are in force before any service starts.
fn plan_host_units(desired: &DesiredHost, facts: &HostFacts, plan: &mut HostPlan) {
    for unit in &desired.host_units {
        plan.checked += 2;
        let state = facts.units.get(unit).copied().unwrap_or_default();
        if !state.enabled {
            plan.push(
                ChangeKind::Service,
                unit,
                "enable at boot".into(),
                Action::EnableService(unit.clone()),
                Phase::Backing,
            );
        }
        if !state.active {
            plan.push_triggering(
                ChangeKind::Service,
                unit,
                "start (not running)".into(),
                Action::StartService(unit.clone()),
                Phase::Backing,
                vec![Handler::Restart(unit.clone())],
            );
        }
    }
}

/// Whether a file belongs to the platform services (units, env files) rather than to PostgreSQL,
/// RabbitMQ or the firewall, which must be configured before any service starts. A unit file
/// goes with the unit it restarts: the firewall's own unit is a backing file.
fn file_phase(file: &DesiredFile, desired: &DesiredHost) -> Phase {
    let touches_service = file.on_change.iter().any(|handler| match handler {
        Handler::DaemonReload | Handler::Stop(_) => false,
        Handler::Restart(unit) | Handler::Reload(unit) => desired.runs_service(unit),
    });
    if touches_service {
        Phase::Services
    } else {
        Phase::Backing
    }
}

fn plan_file(
    index: usize,
    file: &DesiredFile,
    desired: &DesiredHost,
    facts: &HostFacts,
    plan: &mut HostPlan,
) {
    plan.checked += 1;
    let path = match &facts.pg_version {
        Some(version) => resolve_pg_version(&file.path, version),
        None => file.path.clone(),
    };
    let kind = if path.starts_with("/etc/systemd/system/") && path.ends_with(".service") {
        ChangeKind::Unit
    } else {
        ChangeKind::File
    };
    let wanted = resolve_pg_version_in(file.content.bytes(), facts.pg_version.as_deref());
    let current = facts.files.get(&file.path);
    let mut details = Vec::new();
    match current {
        None => details.push(match &file.content {
            // A certificate is described (for whom, until when), never shown as PEM.
            FileContent::Text(text) if pki::is_certificate(text.as_bytes()) => format!(
                "create (mode {:o} {}:{}): {}",
                file.mode,
                file.owner,
                file.group,
                pki::describe_change(None, text)
            ),
            FileContent::Text(text) => format!(
                "create (mode {:o} {}:{})\n{}",
                file.mode,
                file.owner,
                file.group,
                diff("", text, &path)
            ),
            FileContent::SecretText(_) => format!(
                "create secret file (mode {:o} {}:{}, content not shown)",
                file.mode, file.owner, file.group
            ),
        }),
        Some(current) => {
            if current.sha256 != sha256_hex(&wanted) {
                details.push(match (&file.content, &current.content) {
                    (FileContent::Text(text), Some(old))
                        if pki::is_certificate(text.as_bytes()) =>
                    {
                        pki::describe_change(Some(&String::from_utf8_lossy(old)), text)
                    }
                    (FileContent::Text(text), Some(old)) => {
                        diff(&String::from_utf8_lossy(old), text, &path)
                    }
                    (FileContent::Text(_), None) => format!(
                        "content changes (sha256 {} → {})",
                        short(&current.sha256),
                        short(&sha256_hex(&wanted))
                    ),
                    (FileContent::SecretText(_), _) => {
                        "secret file changed (content not shown)".into()
                    }
                });
            }
            if current.mode != file.mode {
                details.push(format!("mode {:o} → {:o}", current.mode, file.mode));
            }
            if current.owner != file.owner || current.group != file.group {
                details.push(format!(
                    "owner {}:{} → {}:{}",
                    current.owner, current.group, file.owner, file.group
                ));
            }
        }
    }
    if details.is_empty() {
        return;
    }
    let phase = file_phase(file, desired);
    plan.push_triggering(
        kind,
        &path,
        details.join("\n"),
        Action::WriteFile {
            file: index,
            path: path.clone(),
        },
        phase,
        file.on_change.clone(),
    );
}

fn diff(old: &str, new: &str, path: &str) -> String {
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path} (on host)"), &format!("{path} (rendered)"))
        .to_string()
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Roles and databases. On a Patroni member they are the cluster's: compared on the primary only
/// (a replica holds the same, read-only), after the backing phase started the cluster (the broker
/// phase, where apply first waits for a leader and asks again who it is); on a cluster none of whose
/// members answers yet, shown on the first member as what a fresh cluster gets.
fn plan_postgres(desired: &DesiredHost, facts: &HostFacts, plan: &mut HostPlan) {
    let Some(postgres) = &desired.postgres else {
        return;
    };
    let phase = match &postgres.cluster {
        None => Phase::Backing,
        Some(member) => {
            let converges_here = match facts.patroni {
                PatroniFact::Primary => true,
                PatroniFact::Replica => false,
                PatroniFact::Silent => member.first,
            };
            if !converges_here {
                return;
            }
            Phase::Broker
        }
    };
    let current = facts.postgres.clone().unwrap_or_default();
    for (index, role) in postgres.roles.iter().enumerate() {
        plan.checked += 1;
        match current.roles.get(&role.name) {
            None => plan.push(
                ChangeKind::Postgres,
                &format!("role {}", role.name),
                "create login role with its password".into(),
                Action::CreateRole(index),
                phase,
            ),
            Some(false) => plan.push(
                ChangeKind::Postgres,
                &format!("role {}", role.name),
                "password changes".into(),
                Action::SetRolePassword(index),
                phase,
            ),
            Some(true) => {}
        }
    }
    for (index, database) in postgres.databases.iter().enumerate() {
        plan.checked += 1;
        let target = format!("database {}", database.name);
        match current.databases.get(&database.name) {
            None => plan.push(
                ChangeKind::Postgres,
                &target,
                format!("create, owned by {}", database.owner),
                Action::CreateDatabase(index),
                phase,
            ),
            Some(owner) if *owner != database.owner => {
                plan.push(
                    ChangeKind::Postgres,
                    &target,
                    format!("owner {owner} → {}", database.owner),
                    Action::SetDatabaseOwner(index),
                    phase,
                );
            }
            Some(_) => {}
        }
    }
}

fn plan_rabbitmq(desired: &DesiredHost, facts: &HostFacts, plan: &mut HostPlan) {
    let Some(rabbitmq) = &desired.rabbitmq else {
        return;
    };
    let current = facts.rabbitmq.clone().unwrap_or_default();
    if let Some(cluster) = &rabbitmq.cluster {
        plan.checked += 1;
        if cluster.node != cluster.seed && !current.cluster_nodes.contains(&cluster.seed) {
            let now = if current.cluster_nodes.is_empty() {
                "not running yet".to_owned()
            } else {
                format!(
                    "in a cluster of {}",
                    current
                        .cluster_nodes
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            // Its vhost, users and permissions are the cluster's, converged on the first node.
            plan.push(
                ChangeKind::Rabbitmq,
                &format!("cluster node {}", cluster.node),
                format!(
                    "{now} → joins {} (reset first; users, vhost and permissions come from the cluster)",
                    cluster.seed
                ),
                Action::JoinCluster,
                Phase::Broker,
            );
            return;
        }
    }
    let user_target = format!("user {}", rabbitmq.user);
    plan.checked += 5;
    if !current.vhosts.contains(&rabbitmq.vhost) {
        plan.push(
            ChangeKind::Rabbitmq,
            &format!("vhost {}", rabbitmq.vhost),
            "create".into(),
            Action::AddVhost,
            Phase::Broker,
        );
    }
    match current.users.get(&rabbitmq.user) {
        None => plan.push(
            ChangeKind::Rabbitmq,
            &user_target,
            "create with its password".into(),
            Action::AddRabbitUser,
            Phase::Broker,
        ),
        Some(_) if !current.password_matches => {
            plan.push(
                ChangeKind::Rabbitmq,
                &user_target,
                "password changes".into(),
                Action::SetRabbitPassword,
                Phase::Broker,
            );
        }
        Some(_) => {}
    }
    let mut wanted_tags = rabbitmq.tags.clone();
    wanted_tags.sort();
    let mut current_tags = current
        .users
        .get(&rabbitmq.user)
        .cloned()
        .unwrap_or_default();
    current_tags.sort();
    if wanted_tags != current_tags {
        plan.push(
            ChangeKind::Rabbitmq,
            &user_target,
            format!(
                "tags [{}] → [{}]",
                current_tags.join(", "),
                wanted_tags.join(", ")
            ),
            Action::SetRabbitTags,
            Phase::Broker,
        );
    }
    if current.permissions.get(&rabbitmq.user) != Some(&rabbitmq.permissions) {
        let (configure, write, read) = &rabbitmq.permissions;
        plan.push(
            ChangeKind::Rabbitmq,
            &format!("permissions {} on {}", rabbitmq.user, rabbitmq.vhost),
            format!("configure {configure:?} write {write:?} read {read:?}"),
            Action::SetRabbitPermissions,
            Phase::Broker,
        );
    }
    if rabbitmq.remove_guest && (current.users.contains_key("guest") || facts.rabbitmq.is_none()) {
        plan.push(
            ChangeKind::Rabbitmq,
            "user guest",
            "delete the default user".into(),
            Action::DeleteGuest,
            Phase::Broker,
        );
    }
}

fn plan_binaries(desired: &DesiredHost, facts: &HostFacts, plan: &mut HostPlan) {
    for (index, binary) in desired.binaries.iter().enumerate() {
        plan.checked += 1;
        let local = binary.sha256.as_str();
        let remote = facts.binaries.get(&binary.remote_path);
        if remote.map(String::as_str) == Some(local) {
            continue;
        }
        let detail = match remote {
            Some(remote) => format!("sha256 {} → {}", short(remote), short(local)),
            None => format!("new (sha256 {})", short(local)),
        };
        plan.push_triggering(
            ChangeKind::Binary,
            &binary.remote_path,
            detail,
            Action::PushBinary(index),
            Phase::Services,
            vec![Handler::Restart(binary.service.clone())],
        );
    }
}

/// `true` when the path still waits for the PostgreSQL version (not installed yet).
pub fn unresolved(path: &str) -> bool {
    path.contains(PG_VERSION_PLACEHOLDER)
}
