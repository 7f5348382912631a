//! Plan and apply logic without a network: what changes, what restarts, what rolls back, and
//! that secrets only travel on stdin, against a scripted fake transport and hand-built facts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use provisioner::converge::apply::{apply_all, HostReport};
use provisioner::converge::facts::{
    self, FileFact, HostFacts, PostgresFacts, RabbitMqFacts, UnitFact,
};
use provisioner::converge::plan::{plan, Action, ChangeKind, Phase};
use provisioner::converge::scram;
use provisioner::converge::transport::fake::FakeTransport;
use provisioner::converge::transport::Transport;
use provisioner::desired::{
    Connection, DesiredBinary, DesiredFile, DesiredHost, FileContent, Handler, PostgresDatabase,
    PostgresRole, PostgresState, RabbitMqState, Secret, ServiceSpec,
};
use provisioner::render::binaries::{self, Arch};

const DB_PASSWORD: &str = "s3cret-db";
const MQ_PASSWORD: &str = "s3cret-mq";

fn text(path: &str, content: &str, mode: u32, owner: &str, on_change: Vec<Handler>) -> DesiredFile {
    DesiredFile {
        path: path.into(),
        content: FileContent::Text(content.into()),
        mode,
        owner: owner.into(),
        group: owner.into(),
        on_change,
    }
}

fn secret(path: &str, content: &str, owner: &str, on_change: Vec<Handler>) -> DesiredFile {
    DesiredFile {
        path: path.into(),
        content: FileContent::SecretText(Secret::new(content)),
        mode: 0o600,
        owner: owner.into(),
        group: owner.into(),
        on_change,
    }
}

fn restart(unit: &str) -> Handler {
    Handler::Restart(unit.into())
}

/// A host running inventory and billing with PostgreSQL and RabbitMQ; binaries are real files
/// in `dir` because apply reads them.
fn desired_host(dir: &Path) -> DesiredHost {
    let binary = |service: &str, content: &[u8]| {
        let local_path = dir.join(service);
        std::fs::write(&local_path, content).expect("local binary");
        DesiredBinary {
            service: service.into(),
            local_path,
            remote_path: format!("/usr/local/bin/{service}"),
            sha256: binaries::sha256_hex(content),
            arch: Arch::from_name(std::env::consts::ARCH).expect("a known architecture"),
        }
    };
    DesiredHost {
        name: "app-vm".into(),
        connection: Connection {
            address: "127.0.0.1".into(),
            port: 22,
            user: "vagrant".into(),
            private_key: PathBuf::from("/nonexistent/key"),
            sudo: true,
            known_hosts: PathBuf::from("/nonexistent/known_hosts"),
            connect_timeout: Duration::from_secs(5),
        },
        packages: vec!["curl".into(), "postgresql".into(), "rabbitmq-server".into()],
        system_users: vec!["inventory".into(), "billing".into()],
        postgres: Some(PostgresState {
            roles: vec![
                PostgresRole { name: "inventory_user".into(), password: Secret::new(DB_PASSWORD) },
                PostgresRole { name: "billing_user".into(), password: Secret::new(DB_PASSWORD) },
            ],
            databases: vec![
                PostgresDatabase { name: "inventory_db".into(), owner: "inventory_user".into() },
                PostgresDatabase { name: "billing_db".into(), owner: "billing_user".into() },
            ],
        }),
        rabbitmq: Some(RabbitMqState {
            vhost: "/platform".into(),
            user: "billing_mq".into(),
            password: Secret::new(MQ_PASSWORD),
            permissions: (".*".into(), ".*".into(), ".*".into()),
            remove_guest: true,
            tags: vec!["management".into()],
        }),
        files: vec![
            text(
                "/etc/systemd/system/inventory.service",
                "[Service]\nExecStart=/usr/local/bin/inventory\nUser=inventory\n",
                0o644,
                "root",
                vec![Handler::DaemonReload, restart("inventory")],
            ),
            secret(
                "/etc/inventory/inventory.env",
                &format!("DATABASE_URL=postgres://inventory_user:{DB_PASSWORD}@127.0.0.1/inventory_db\n"),
                "inventory",
                vec![restart("inventory")],
            ),
            text(
                "/etc/systemd/system/billing.service",
                "[Service]\nExecStart=/usr/local/bin/billing\nUser=billing\n",
                0o644,
                "root",
                vec![Handler::DaemonReload, restart("billing")],
            ),
            secret(
                "/etc/billing/billing.env",
                &format!("AMQP_URL=amqp://billing_mq:{MQ_PASSWORD}@127.0.0.1/%2Fplatform\n"),
                "billing",
                vec![restart("billing")],
            ),
            text(
                "/etc/postgresql/{pg_version}/main/pg_hba.conf",
                "local all postgres peer\nhost inventory_db inventory_user 10.0.0.11/32 scram-sha-256\n",
                0o640,
                "postgres",
                vec![Handler::Reload("postgresql".into())],
            ),
        ],
        binaries: vec![binary("inventory", b"inventory v1"), binary("billing", b"billing v1")],
        services: vec![
            ServiceSpec { unit: "inventory".into(), health_url: "http://127.0.0.1:8080/health".into(), ready_url: "http://127.0.0.1:8080/ready".into() },
            ServiceSpec { unit: "billing".into(), health_url: "http://127.0.0.1:8081/health".into(), ready_url: "http://127.0.0.1:8081/ready".into() },
        ],
        host_units: Vec::new(),
    }
}

/// Facts of a host that already is exactly as desired.
fn converged(desired: &DesiredHost) -> HostFacts {
    HostFacts {
        packages: desired.packages.iter().cloned().collect(),
        users: desired.system_users.iter().cloned().collect(),
        arch: Some(std::env::consts::ARCH.into()),
        pg_version: Some("15".into()),
        files: desired
            .files
            .iter()
            .map(|file| {
                let fact = FileFact {
                    mode: file.mode,
                    owner: file.owner.clone(),
                    group: file.group.clone(),
                    sha256: binaries::sha256_hex(file.content.bytes()),
                    content: match &file.content {
                        FileContent::Text(text) => Some(text.as_bytes().to_vec()),
                        FileContent::SecretText(_) => None,
                    },
                };
                (file.path.clone(), fact)
            })
            .collect(),
        binaries: desired
            .binaries
            .iter()
            .map(|binary| (binary.remote_path.clone(), binary.sha256.clone()))
            .collect(),
        units: desired
            .services
            .iter()
            .map(|service| &service.unit)
            .chain(&desired.host_units)
            .map(|unit| {
                (
                    unit.clone(),
                    UnitFact {
                        active: true,
                        enabled: true,
                    },
                )
            })
            .collect(),
        postgres: Some(PostgresFacts {
            roles: [
                ("postgres".to_string(), false),
                ("inventory_user".into(), true),
                ("billing_user".into(), true),
            ]
            .into(),
            databases: [
                ("postgres".to_string(), "postgres".to_string()),
                ("inventory_db".into(), "inventory_user".into()),
                ("billing_db".into(), "billing_user".into()),
            ]
            .into(),
        }),
        rabbitmq: Some(RabbitMqFacts {
            vhosts: ["/".to_string(), "/platform".into()].into(),
            users: [("billing_mq".to_string(), vec!["management".to_string()])].into(),
            permissions: [(
                "billing_mq".to_string(),
                (".*".to_string(), ".*".to_string(), ".*".to_string()),
            )]
            .into(),
            password_matches: true,
        }),
    }
}

/// What the facts script would print on a host holding `facts` (the inverse of parsing).
fn script_output(desired: &DesiredHost, facts: &HostFacts) -> String {
    let mut out = format!(
        "@@arch\n{}\n@@pgversion\n{}\n@@packages\n",
        facts.arch.clone().unwrap_or_default(),
        facts.pg_version.clone().unwrap_or_default()
    );
    for package in &facts.packages {
        let _ = writeln!(out, "{package} ii ");
    }
    out.push_str("@@users\n");
    for user in &facts.users {
        let _ = writeln!(out, "{user}");
    }
    out.push_str("@@files\n");
    for (index, file) in desired.files.iter().enumerate() {
        if let Some(fact) = facts.files.get(&file.path) {
            let _ = writeln!(
                out,
                "F {index} {:o} {} {} {}",
                fact.mode, fact.owner, fact.group, fact.sha256
            );
            if let Some(content) = &fact.content {
                let _ = writeln!(out, "C {index} {}", STANDARD.encode(content));
            }
        }
    }
    out.push_str("@@binaries\n");
    for (index, binary) in desired.binaries.iter().enumerate() {
        if let Some(sha) = facts.binaries.get(&binary.remote_path) {
            let _ = writeln!(out, "B {index} {sha}");
        }
    }
    out.push_str("@@units\n");
    for (unit, state) in &facts.units {
        let active = if state.active { "active" } else { "inactive" };
        let enabled = if state.enabled { "enabled" } else { "disabled" };
        let _ = writeln!(out, "{unit} {active} {enabled}");
    }
    if let Some(postgres) = &facts.postgres {
        out.push_str("@@pgroles\n");
        for (role, matches) in &postgres.roles {
            let verifier = if *matches {
                scram::make_verifier(DB_PASSWORD).expect("verifier")
            } else {
                String::new()
            };
            let _ = writeln!(out, "{role}\t{verifier}");
        }
        out.push_str("@@pgdatabases\n");
        for (database, owner) in &postgres.databases {
            let _ = writeln!(out, "{database}\t{owner}");
        }
    }
    if let Some(rabbitmq) = &facts.rabbitmq {
        out.push_str("@@rmqvhosts\n");
        for vhost in &rabbitmq.vhosts {
            let _ = writeln!(out, "{vhost}");
        }
        out.push_str("@@rmqusers\n");
        for (user, tags) in &rabbitmq.users {
            let _ = writeln!(out, "{user}\t[{}]", tags.join(", "));
        }
        out.push_str("@@rmqpermissions\n");
        for (user, (configure, write, read)) in &rabbitmq.permissions {
            let _ = writeln!(out, "{user}\t{configure}\t{write}\t{read}");
        }
        let _ = writeln!(
            out,
            "@@rmqauth\n{}",
            if rabbitmq.password_matches { 0 } else { 65 }
        );
    }
    out.push_str("@@end\n");
    out
}

fn changed_file(facts: &mut HostFacts, path: &str, old_content: &str) {
    let fact = facts.files.get_mut(path).expect("file in facts");
    fact.sha256 = binaries::sha256_hex(old_content.as_bytes());
    if fact.content.is_some() {
        fact.content = Some(old_content.as_bytes().to_vec());
    }
}

fn targets(plan: &provisioner::converge::plan::HostPlan) -> Vec<(ChangeKind, String)> {
    plan.changes
        .iter()
        .map(|change| (change.kind, change.target.clone()))
        .collect()
}

#[test]
fn a_converged_host_has_an_empty_plan_and_restarts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let plan = plan(&desired, &converged(&desired));
    assert!(plan.is_empty(), "{:?}", targets(&plan));
    assert!(plan.handlers.is_empty() && plan.restarts.is_empty());
    assert!(
        plan.checked >= 20,
        "everything was compared: {}",
        plan.checked
    );
}

#[test]
fn a_changed_env_file_restarts_only_its_service_and_shows_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    changed_file(
        &mut facts,
        "/etc/billing/billing.env",
        "AMQP_URL=amqp://billing_mq:old-password@10.0.0.13/x\n",
    );
    let plan = plan(&desired, &facts);
    assert_eq!(
        targets(&plan),
        [(ChangeKind::File, "/etc/billing/billing.env".to_string())]
    );
    assert_eq!(plan.restarts, ["billing"]);
    assert!(!plan.handlers.contains(&Handler::DaemonReload));
    let detail = &plan.changes[0].detail;
    assert!(detail.contains("secret file changed"), "{detail}");
    assert!(
        !detail.contains(MQ_PASSWORD) && !detail.contains("old-password"),
        "{detail}"
    );
}

#[test]
fn a_changed_unit_reloads_systemd_once_and_restarts_only_that_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    changed_file(
        &mut facts,
        "/etc/systemd/system/inventory.service",
        "[Service]\nExecStart=/usr/local/bin/inventory\nUser=root\n",
    );
    let plan = plan(&desired, &facts);
    assert_eq!(
        targets(&plan),
        [(
            ChangeKind::Unit,
            "/etc/systemd/system/inventory.service".to_string()
        )]
    );
    assert_eq!(
        plan.handlers.iter().cloned().collect::<Vec<_>>(),
        [Handler::DaemonReload, restart("inventory")]
    );
    assert_eq!(plan.restarts, ["inventory"]);
    let detail = &plan.changes[0].detail;
    assert!(
        detail.contains("-User=root") && detail.contains("+User=inventory"),
        "a unified diff: {detail}"
    );
    assert_eq!(plan.changes[0].phase, Phase::Services);
}

#[test]
fn a_changed_binary_restarts_its_service_and_shows_checksums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    facts.binaries.insert(
        "/usr/local/bin/billing".into(),
        "0123456789abcdef0123".into(),
    );
    let plan = plan(&desired, &facts);
    assert_eq!(
        targets(&plan),
        [(ChangeKind::Binary, "/usr/local/bin/billing".to_string())]
    );
    assert_eq!(plan.restarts, ["billing"]);
    assert!(
        plan.changes[0].detail.starts_with("sha256 0123456789ab → "),
        "{}",
        plan.changes[0].detail
    );
    assert_eq!(plan.changes[0].action, Action::PushBinary(1));
}

#[test]
fn a_pg_hba_change_reloads_postgresql_before_services_and_restarts_no_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    changed_file(
        &mut facts,
        "/etc/postgresql/{pg_version}/main/pg_hba.conf",
        "local all postgres peer\n",
    );
    let plan = plan(&desired, &facts);
    assert_eq!(
        targets(&plan),
        [(
            ChangeKind::File,
            "/etc/postgresql/15/main/pg_hba.conf".to_string()
        )]
    );
    assert_eq!(
        plan.handlers.iter().cloned().collect::<Vec<_>>(),
        [Handler::Reload("postgresql".into())]
    );
    assert!(plan.restarts.is_empty());
    assert_eq!(plan.changes[0].phase, Phase::Backing);
}

#[test]
fn only_mode_and_owner_drift_is_a_change_without_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    let fact = facts
        .files
        .get_mut("/etc/inventory/inventory.env")
        .expect("file");
    fact.mode = 0o644;
    fact.owner = "root".into();
    let plan = plan(&desired, &facts);
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(
        plan.changes[0].detail,
        "mode 644 → 600\nowner root:inventory → inventory:inventory"
    );
    assert_eq!(plan.restarts, ["inventory"]);
}

#[test]
fn database_and_broker_drift_is_planned_without_touching_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    let postgres = facts.postgres.as_mut().expect("postgres");
    postgres.roles.insert("billing_user".into(), false);
    postgres.databases.remove("inventory_db");
    let rabbitmq = facts.rabbitmq.as_mut().expect("rabbitmq");
    rabbitmq.password_matches = false;
    rabbitmq
        .users
        .insert("guest".into(), vec!["administrator".into()]);
    let plan = plan(&desired, &facts);
    let actions: Vec<Action> = plan
        .changes
        .iter()
        .map(|change| change.action.clone())
        .collect();
    assert_eq!(
        actions,
        [
            Action::SetRolePassword(1),
            Action::CreateDatabase(0),
            Action::SetRabbitPassword,
            Action::DeleteGuest
        ]
    );
    assert!(
        plan.restarts.is_empty(),
        "credentials in the database changed, not the services' files"
    );
    assert!(plan
        .changes
        .iter()
        .all(|change| change.phase == Phase::Backing));
}

#[test]
fn a_stopped_service_is_started_and_a_disabled_one_enabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    facts.units.insert(
        "billing".into(),
        UnitFact {
            active: false,
            enabled: false,
        },
    );
    let plan = plan(&desired, &facts);
    let actions: Vec<Action> = plan
        .changes
        .iter()
        .map(|change| change.action.clone())
        .collect();
    assert_eq!(
        actions,
        [
            Action::EnableService("billing".into()),
            Action::StartService("billing".into())
        ]
    );
    assert_eq!(plan.restarts, ["billing"]);
}

#[test]
fn a_bare_host_needs_everything_with_the_postgres_path_still_unresolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let facts = HostFacts::default();
    let plan = plan(&desired, &facts);
    let count = |kind| {
        plan.changes
            .iter()
            .filter(|change| change.kind == kind)
            .count()
    };
    assert_eq!(count(ChangeKind::Package), 3);
    assert_eq!(count(ChangeKind::User), 2);
    assert_eq!(count(ChangeKind::Unit), 2);
    assert_eq!(count(ChangeKind::File), 3);
    assert_eq!(count(ChangeKind::Binary), 2);
    assert_eq!(count(ChangeKind::Postgres), 4);
    assert_eq!(
        count(ChangeKind::Rabbitmq),
        5,
        "vhost, user, tags, permissions, guest"
    );
    assert_eq!(plan.restarts, ["inventory", "billing"]);
    assert!(plan
        .changes
        .iter()
        .any(|change| change.target == "/etc/postgresql/{pg_version}/main/pg_hba.conf"));
    let everything: String = plan
        .changes
        .iter()
        .map(|change| format!("{} {}\n", change.target, change.detail))
        .collect();
    assert!(
        !everything.contains(DB_PASSWORD) && !everything.contains(MQ_PASSWORD),
        "{everything}"
    );
}

#[test]
fn facts_are_gathered_in_one_round_trip_with_secrets_only_on_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let expected = converged(&desired);
    let fake = host_reporting(&desired, &expected);
    let gathered = facts::gather(&fake, &desired).expect("facts");
    assert_eq!(gathered, expected);
    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "one round trip");
    assert!(calls[0].sudo);
    assert!(!calls[0].command.contains(MQ_PASSWORD));
    let script =
        String::from_utf8(calls[0].stdin.clone().expect("script on stdin")).expect("utf-8");
    assert!(
        script.contains(r#"f=/etc/postgresql/"$PGV"/main/pg_hba.conf;"#),
        "{script}"
    );

    // A verifier made for another password does not match: plan would reset it.
    let mut wrong = expected.clone();
    wrong
        .postgres
        .as_mut()
        .expect("postgres")
        .roles
        .insert("billing_user".into(), false);
    let output = script_output(&desired, &expected).replace(
        "billing_user\tSCRAM",
        &format!(
            "billing_user\t{}\nignored\tSCRAM",
            scram::make_verifier("other").expect("verifier")
        ),
    );
    let parsed = facts::parse_facts(&desired, &output);
    assert_eq!(
        parsed.postgres.expect("postgres").roles.get("billing_user"),
        Some(&false)
    );
}

#[test]
fn a_host_of_another_architecture_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    // The binaries are built for this machine (render read that from their ELF headers).
    assert_eq!(desired.binaries[0].arch.as_str(), std::env::consts::ARCH);
    let mut facts = converged(&desired);
    facts.arch = Some(
        if std::env::consts::ARCH == "aarch64" {
            "x86_64"
        } else {
            "aarch64"
        }
        .into(),
    );
    let fake = host_reporting(&desired, &facts);
    let error = facts::gather(&fake, &desired).expect_err("refused");
    assert!(
        error.to_string().starts_with("app-vm: the host is "),
        "{error}"
    );

    // The same host with the binaries' own architecture is fine.
    facts.arch = Some(std::env::consts::ARCH.into());
    let fake = host_reporting(&desired, &facts);
    facts::gather(&fake, &desired).expect("accepted");
}

/// A scripted host whose facts script reports `facts`.
fn host_reporting(desired: &DesiredHost, facts: &HostFacts) -> FakeTransport {
    let fake = FakeTransport::new("app-vm");
    fake.answer("sh -s", 0, &script_output(desired, facts));
    fake
}

/// Applies to a host reporting `facts`, expecting `changed` changes, no failure and no platform
/// service restarted (changes of the firewall alone); the fake keeps the transcript.
fn apply_without_restarts(
    desired: &DesiredHost,
    facts: &HostFacts,
    changed: usize,
) -> FakeTransport {
    let fake = host_reporting(desired, facts);
    let report = apply_one(desired, &fake);
    assert_eq!(
        (report.changed, report.failed),
        (changed, 0),
        "{:?}",
        report.error
    );
    assert!(report.restarted.is_empty(), "{:?}", report.restarted);
    fake
}

fn apply_one(desired: &DesiredHost, fake: &FakeTransport) -> HostReport {
    let transport: &dyn Transport = fake;
    apply_all(&[(desired, Ok(transport))], std::num::NonZeroUsize::MIN)
        .pop()
        .expect("one report")
}

#[test]
fn applying_a_converged_host_changes_and_restarts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let fake = host_reporting(&desired, &converged(&desired));
    let report = apply_one(&desired, &fake);
    assert_eq!(
        (report.changed, report.failed, report.error.as_deref()),
        (0, 0, None)
    );
    assert!(report.restarted.is_empty());
    assert!(report.ok >= 20);
    assert_eq!(
        fake.calls().len(),
        1,
        "only the facts: {}",
        fake.transcript()
    );
}

#[test]
fn applying_an_env_change_writes_it_through_stdin_and_restarts_only_its_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    changed_file(&mut facts, "/etc/billing/billing.env", "old\n");
    let fake = host_reporting(&desired, &facts);
    let report = apply_one(&desired, &fake);
    assert_eq!(
        (report.changed, report.failed),
        (1, 0),
        "{:?}",
        report.error
    );
    assert_eq!(report.restarted, ["billing"]);
    let transcript = fake.transcript();
    assert!(
        transcript.contains("systemctl restart billing"),
        "{transcript}"
    );
    assert!(
        !transcript.contains("daemon-reload") && !transcript.contains("restart inventory"),
        "{transcript}"
    );
    assert!(
        !transcript.contains(MQ_PASSWORD),
        "no secret on a command line"
    );
    let write = fake
        .calls()
        .into_iter()
        .find(|call| call.command.contains("/etc/billing/billing.env"))
        .expect("write");
    assert!(
        write.command.contains("chmod 600") && write.command.contains("chown billing:billing"),
        "{}",
        write.command
    );
    assert!(String::from_utf8_lossy(&write.stdin.expect("stdin")).contains(MQ_PASSWORD));
}

#[test]
fn an_unhealthy_new_binary_is_rolled_back_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    facts
        .binaries
        .insert("/usr/local/bin/billing".into(), "oldsha".into());
    let fake = host_reporting(&desired, &facts);
    // The new binary never answers; once rolled back, the previous one does.
    fake.answer_times("http://127.0.0.1:8081/health", 1, 1, "");
    let report = apply_one(&desired, &fake);
    assert_eq!(report.rolled_back, ["billing"]);
    assert_eq!(report.restarted, ["billing"]);
    assert_eq!(report.failed, 1);
    let error = report.error.expect("an error");
    assert!(
        error.contains("rolled back to the previous binary, which is healthy again"),
        "{error}"
    );
    let transcript = fake.transcript();
    let push = transcript
        .find("ln -f /usr/local/bin/billing /usr/local/bin/billing.previous")
        .expect("previous kept");
    let rollback = transcript
        .find("cp -p /usr/local/bin/billing.previous")
        .expect("rolled back");
    assert!(push < rollback);
}

#[test]
fn a_bare_host_gets_packages_then_databases_and_broker_then_services_with_secrets_on_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let bare = HostFacts::default();
    // After installing, PostgreSQL and RabbitMQ are there with their defaults.
    let installed = HostFacts {
        packages: desired.packages.iter().cloned().collect(),
        pg_version: Some("15".into()),
        postgres: Some(PostgresFacts {
            roles: [("postgres".to_string(), false)].into(),
            databases: [("postgres".to_string(), "postgres".to_string())].into(),
        }),
        rabbitmq: Some(RabbitMqFacts {
            vhosts: ["/".to_string()].into(),
            users: [("guest".to_string(), vec!["administrator".to_string()])].into(),
            permissions: BTreeMap::new(),
            password_matches: false,
        }),
        ..HostFacts::default()
    };
    let fake = FakeTransport::new("app-vm");
    fake.answer_times("sh -s", 1, 0, &script_output(&desired, &bare));
    fake.answer("sh -s", 0, &script_output(&desired, &installed));
    let report = apply_one(&desired, &fake);
    assert_eq!(report.failed, 0, "{:?}", report.error);
    assert_eq!(report.restarted, ["inventory", "billing"]);

    let calls = fake.calls();
    let position = |needle: &str| {
        calls
            .iter()
            .position(|call| call.command.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{}", fake.transcript()))
    };
    assert!(position("apt-get install") < position("useradd"));
    assert!(position("useradd") < position("/etc/postgresql/15/main/pg_hba.conf"));
    assert!(position("pg_hba.conf") < position("systemctl reload-or-restart postgresql"));
    assert!(position("psql") < position("rabbitmqctl -q add_user"));
    assert!(position("delete_user guest") < position("/usr/local/bin/inventory"));
    assert!(position("/etc/systemd/system/billing.service") < position("systemctl daemon-reload"));
    assert!(position("systemctl daemon-reload") < position("systemctl restart inventory"));
    assert_eq!(
        calls
            .iter()
            .filter(|call| call.command.contains("daemon-reload"))
            .count(),
        1
    );

    for call in &calls {
        assert!(
            !call.command.contains(DB_PASSWORD) && !call.command.contains(MQ_PASSWORD),
            "{}",
            call.command
        );
    }
    let sql: String = calls
        .iter()
        .filter(|call| call.command.contains("psql"))
        .map(|call| String::from_utf8_lossy(call.stdin.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert!(
        sql.contains("CREATE ROLE \"billing_user\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:"),
        "{sql}"
    );
    assert!(
        sql.contains("CREATE DATABASE \"billing_db\" OWNER \"billing_user\""),
        "{sql}"
    );
    assert!(
        !sql.contains(DB_PASSWORD),
        "only verifiers reach PostgreSQL"
    );
    let add_user = calls
        .iter()
        .find(|call| call.command.contains("add_user"))
        .expect("add_user");
    assert_eq!(add_user.stdin.as_deref(), Some(MQ_PASSWORD.as_bytes()));
}

const FIREWALL_RULES: &str = "/etc/platform-firewall/rules.nft";
const FIREWALL_UNIT_FILE: &str = "/etc/systemd/system/platform-firewall.service";

/// The same host with the firewall render gives a host where platform ports listen.
fn with_firewall(mut desired: DesiredHost) -> DesiredHost {
    desired.packages.push("nftables".into());
    desired.files.push(text(
        FIREWALL_RULES,
        "table inet streaming_platform {}\ndelete table inet streaming_platform\n",
        0o644,
        "root",
        vec![Handler::Reload("platform-firewall".into())],
    ));
    desired.files.push(text(
        FIREWALL_UNIT_FILE,
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/sbin/nft -f /etc/platform-firewall/rules.nft\n",
        0o644,
        "root",
        vec![Handler::DaemonReload, restart("platform-firewall")],
    ));
    desired.host_units.push("platform-firewall".into());
    desired
}

#[test]
fn new_firewall_rules_reload_the_firewall_alone_before_any_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = with_firewall(desired_host(dir.path()));
    let mut facts = converged(&desired);
    changed_file(&mut facts, FIREWALL_RULES, "# older rules\n");
    let plan = plan(&desired, &facts);
    assert_eq!(
        targets(&plan),
        [(ChangeKind::File, FIREWALL_RULES.to_string())]
    );
    assert_eq!(plan.changes[0].phase, Phase::Backing);
    assert_eq!(
        plan.handlers.iter().cloned().collect::<Vec<_>>(),
        [Handler::Reload("platform-firewall".into())]
    );
    assert!(plan.restarts.is_empty(), "{:?}", plan.restarts);

    let fake = apply_without_restarts(&desired, &facts, 1);
    let transcript = fake.transcript();
    assert!(
        transcript.contains("systemctl reload-or-restart platform-firewall"),
        "{transcript}"
    );
    for absent in ["daemon-reload", "restart inventory", "restart billing"] {
        assert!(!transcript.contains(absent), "{absent} in:\n{transcript}");
    }
}

#[test]
fn a_changed_firewall_unit_reloads_systemd_and_restarts_the_firewall_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = with_firewall(desired_host(dir.path()));
    let mut facts = converged(&desired);
    changed_file(&mut facts, FIREWALL_UNIT_FILE, "[Service]\nType=oneshot\n");
    let plan = plan(&desired, &facts);
    assert_eq!(
        targets(&plan),
        [(ChangeKind::Unit, FIREWALL_UNIT_FILE.to_string())]
    );
    assert_eq!(plan.changes[0].phase, Phase::Backing);
    assert!(plan.restarts.is_empty(), "{:?}", plan.restarts);

    let fake = apply_without_restarts(&desired, &facts, 1);
    let calls: Vec<String> = fake.calls().into_iter().map(|call| call.command).collect();
    let reload = calls
        .iter()
        .position(|call| call == "systemctl daemon-reload");
    let restart = calls
        .iter()
        .position(|call| call == "systemctl restart platform-firewall");
    assert!(
        matches!((reload, restart), (Some(reload), Some(restart)) if reload < restart),
        "{}",
        fake.transcript()
    );
    let transcript = fake.transcript();
    for absent in ["restart inventory", "restart billing", "reload-or-restart"] {
        assert!(!transcript.contains(absent), "{absent} in:\n{transcript}");
    }
}

#[test]
fn a_stopped_firewall_is_enabled_and_started_before_the_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = with_firewall(desired_host(dir.path()));
    let mut facts = converged(&desired);
    facts.units.insert(
        "platform-firewall".into(),
        UnitFact {
            active: false,
            enabled: false,
        },
    );
    let plan = plan(&desired, &facts);
    let actions: Vec<(Action, Phase)> = plan
        .changes
        .iter()
        .map(|change| (change.action.clone(), change.phase))
        .collect();
    assert_eq!(
        actions,
        [
            (
                Action::EnableService("platform-firewall".into()),
                Phase::Backing
            ),
            (
                Action::StartService("platform-firewall".into()),
                Phase::Backing
            ),
        ]
    );
    assert!(plan.restarts.is_empty(), "{:?}", plan.restarts);

    let fake = apply_without_restarts(&desired, &facts, 2);
    let transcript = fake.transcript();
    assert!(
        transcript.contains("systemctl enable platform-firewall.service")
            && transcript.contains("systemctl restart platform-firewall"),
        "{transcript}"
    );
}

#[test]
fn a_bare_host_gets_its_firewall_before_any_service_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = with_firewall(desired_host(dir.path()));
    let bare = HostFacts::default();
    let fake = FakeTransport::new("app-vm");
    fake.answer_times("sh -s", 1, 0, &script_output(&desired, &bare));
    let mut installed = bare.clone();
    installed.packages = desired.packages.iter().cloned().collect();
    installed.pg_version = Some("15".into());
    installed.postgres = converged(&desired).postgres;
    installed.rabbitmq = converged(&desired).rabbitmq;
    fake.answer("sh -s", 0, &script_output(&desired, &installed));
    let report = apply_one(&desired, &fake);
    assert_eq!(report.failed, 0, "{:?}", report.error);
    assert_eq!(report.restarted, ["inventory", "billing"]);
    let calls: Vec<String> = fake.calls().into_iter().map(|call| call.command).collect();
    let position = |needle: &str| {
        calls
            .iter()
            .position(|call| call.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{}", fake.transcript()))
    };
    assert!(position(FIREWALL_RULES) < position("systemctl restart platform-firewall"));
    assert!(position(FIREWALL_UNIT_FILE) < position("systemctl daemon-reload"));
    assert!(position("systemctl daemon-reload") < position("systemctl restart platform-firewall"));
    assert!(
        position("systemctl restart platform-firewall") < position("systemctl restart inventory")
    );
}

/// The handlers a transcript shows apply running, in order: daemon-reloads, reloads, and
/// restarts, whether plain or of a health-checked platform service.
fn handlers_run(fake: &FakeTransport) -> Vec<Handler> {
    fake.calls()
        .into_iter()
        .filter_map(|call| {
            let command = call.command;
            if command == "systemctl daemon-reload" {
                Some(Handler::DaemonReload)
            } else if let Some(unit) = command.strip_prefix("systemctl reload-or-restart ") {
                Some(Handler::Reload(unit.into()))
            } else if let Some(unit) = command.strip_prefix("systemctl restart ") {
                Some(restart(unit))
            } else if command.starts_with("systemctl reset-failed ") {
                let unit = command.rsplit(' ').next().expect("a unit");
                Some(restart(unit))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn apply_runs_exactly_the_handlers_the_plan_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = with_firewall(desired_host(dir.path()));
    let converged_facts = converged(&desired);
    let mut scenarios: Vec<(&str, HostFacts)> = vec![("converged", converged_facts.clone())];
    let mut env = converged_facts.clone();
    changed_file(&mut env, "/etc/billing/billing.env", "old\n");
    scenarios.push(("env file", env));
    let mut unit = converged_facts.clone();
    changed_file(
        &mut unit,
        "/etc/systemd/system/inventory.service",
        "[Service]\n",
    );
    scenarios.push(("service unit", unit));
    let mut stopped = converged_facts.clone();
    stopped.units.insert(
        "billing".into(),
        UnitFact {
            active: false,
            enabled: true,
        },
    );
    scenarios.push(("stopped service", stopped));
    let mut mixed = converged_facts.clone();
    changed_file(
        &mut mixed,
        "/etc/postgresql/{pg_version}/main/pg_hba.conf",
        "local all all trust\n",
    );
    changed_file(&mut mixed, FIREWALL_UNIT_FILE, "[Service]\n");
    changed_file(&mut mixed, FIREWALL_RULES, "# older rules\n");
    changed_file(
        &mut mixed,
        "/etc/systemd/system/billing.service",
        "[Service]\n",
    );
    mixed
        .binaries
        .insert("/usr/local/bin/inventory".into(), "oldsha".into());
    scenarios.push(("firewall, pg_hba, a unit and a binary", mixed));

    for (name, facts) in scenarios {
        let planned = plan(&desired, &facts);
        let fake = host_reporting(&desired, &facts);
        let report = apply_one(&desired, &fake);
        assert_eq!(report.failed, 0, "{name}: {:?}", report.error);
        let run = handlers_run(&fake);
        let steps: Vec<Handler> = planned
            .steps
            .iter()
            .map(|step| step.handler.clone())
            .collect();
        assert_eq!(run, steps, "{name}:\n{}", fake.transcript());
        let distinct: std::collections::BTreeSet<Handler> = run.into_iter().collect();
        assert_eq!(distinct, planned.handlers, "{name}");
        assert_eq!(report.restarted, planned.restarts, "{name}");
    }
}

#[test]
fn a_bare_host_runs_the_handlers_of_its_plan_made_after_installing_packages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = with_firewall(desired_host(dir.path()));
    let bare = HostFacts::default();
    let mut installed = bare.clone();
    installed.packages = desired.packages.iter().cloned().collect();
    installed.pg_version = Some("15".into());
    installed.postgres = converged(&desired).postgres;
    installed.rabbitmq = converged(&desired).rabbitmq;
    let fake = FakeTransport::new("app-vm");
    fake.answer_times("sh -s", 1, 0, &script_output(&desired, &bare));
    fake.answer("sh -s", 0, &script_output(&desired, &installed));
    let report = apply_one(&desired, &fake);
    assert_eq!(report.failed, 0, "{:?}", report.error);

    let planned = plan(&desired, &installed);
    let steps: Vec<Handler> = planned
        .steps
        .iter()
        .map(|step| step.handler.clone())
        .collect();
    assert_eq!(handlers_run(&fake), steps, "{}", fake.transcript());
    assert_eq!(
        steps,
        [
            Handler::DaemonReload,
            Handler::Reload("postgresql".into()),
            restart("platform-firewall"),
            Handler::DaemonReload,
            restart("inventory"),
            restart("billing"),
        ],
        "the firewall's unit and the services' units are written in different phases"
    );
    assert_eq!(report.restarted, planned.restarts);
}

#[test]
fn a_package_still_missing_after_apt_get_fails_the_host_before_anything_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    let missing = desired.packages[0].clone();
    facts.packages.remove(&missing);
    // apt-get "succeeds", yet every facts run still lacks the package.
    let fake = host_reporting(&desired, &facts);
    let report = apply_one(&desired, &fake);
    assert_eq!(report.failed, 1, "{:?}", report.error);
    let error = report.error.expect("an error");
    assert!(
        error.contains("still not installed") && error.contains(&missing),
        "{error}"
    );
    assert!(report.restarted.is_empty(), "{:?}", report.restarted);
    let calls = fake.calls();
    assert!(calls
        .iter()
        .any(|call| call.command.contains("apt-get install")));
    assert!(
        !calls.iter().any(|call| call.command.contains("systemctl")),
        "{}",
        fake.transcript()
    );
}
