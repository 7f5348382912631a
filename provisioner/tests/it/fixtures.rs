//! Shared by the plan, apply and facts tests: a desired host with every kind of state, the
//! facts of that host converged, and a scripted fake host answering with them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use provisioner::converge::apply::{apply_all, HostReport, Rollout};
use provisioner::converge::facts::{
    self, FileFact, HostFacts, PostgresFacts, RabbitMqFacts, UnitFact,
};
use provisioner::converge::plan::ChangeKind;
use provisioner::converge::transport::fake::FakeTransport;
use provisioner::converge::transport::Transport;
use provisioner::desired::{
    Connection, DesiredBinary, DesiredFile, DesiredHost, FileContent, Handler, PostgresDatabase,
    PostgresRole, PostgresState, RabbitMqState, Secret, ServiceSpec,
};
use provisioner::render::binaries::{self, Arch};

pub(crate) fn text(
    path: &str,
    content: &str,
    mode: u32,
    owner: &str,
    on_change: Vec<Handler>,
) -> DesiredFile {
    provisioner::render::text_file(path, content.into(), mode, owner, on_change)
}

pub(crate) fn secret(
    path: &str,
    content: &str,
    owner: &str,
    on_change: Vec<Handler>,
) -> DesiredFile {
    DesiredFile {
        path: path.into(),
        content: FileContent::SecretText(Secret::new(content)),
        mode: 0o600,
        owner: owner.into(),
        group: owner.into(),
        on_change,
    }
}

pub(crate) fn restart(unit: &str) -> Handler {
    Handler::Restart(unit.into())
}

/// A host running inventory and billing with PostgreSQL and RabbitMQ; binaries are real files
/// in `dir` because apply reads them.
pub(crate) fn desired_host(dir: &Path) -> DesiredHost {
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
            cluster: None,
        }),
        rabbitmq: Some(RabbitMqState {
            vhost: "/platform".into(),
            user: "billing_mq".into(),
            password: Secret::new(MQ_PASSWORD),
            permissions: (".*".into(), ".*".into(), ".*".into()),
            remove_guest: true,
            tags: vec!["management".into()],
            cluster: None,
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
            ServiceSpec { unit: "inventory".into(), health_url: "http://127.0.0.1:8080/health".into(), ready_url: "http://127.0.0.1:8080/ready".into(), socket: None, tls: None },
            ServiceSpec { unit: "billing".into(), health_url: "http://127.0.0.1:8081/health".into(), ready_url: "http://127.0.0.1:8081/ready".into(), socket: None, tls: None },
        ],
        host_units: Vec::new(),
    }
}

/// Facts of a host that already is exactly as desired.
pub(crate) fn converged(desired: &DesiredHost) -> HostFacts {
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
            ..RabbitMqFacts::default()
        }),
        patroni: facts::PatroniFact::Silent,
        // Processes and files as an apply leaves them: nothing written after its restart.
        started: std::collections::BTreeMap::new(),
        modified: std::collections::BTreeMap::new(),
    }
}

pub(crate) fn changed_file(facts: &mut HostFacts, path: &str, old_content: &str) {
    let fact = facts.files.get_mut(path).expect("file in facts");
    fact.sha256 = binaries::sha256_hex(old_content.as_bytes());
    if fact.content.is_some() {
        fact.content = Some(old_content.as_bytes().to_vec());
    }
}

pub(crate) fn targets(plan: &provisioner::converge::plan::HostPlan) -> Vec<(ChangeKind, String)> {
    plan.changes
        .iter()
        .map(|change| (change.kind, change.target.clone()))
        .collect()
}

/// A scripted host whose facts script reports `facts`.
pub(crate) fn host_reporting(desired: &DesiredHost, facts: &HostFacts) -> FakeTransport {
    let fake = FakeTransport::new(&desired.name);
    fake.answer("sh -s", 0, &facts::script_output(desired, facts));
    fake
}

/// Applies to a host reporting `facts`, expecting `changed` changes, no failure and no platform
/// service restarted (changes of the firewall alone); the fake keeps the transcript.
pub(crate) fn apply_without_restarts(
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

pub(crate) fn apply_one(desired: &DesiredHost, fake: &FakeTransport) -> HostReport {
    let transport: &dyn Transport = fake;
    apply_all(
        &[(desired, Ok(transport))],
        std::num::NonZeroUsize::MIN,
        Rollout::default(),
    )
    .pop()
    .expect("one report")
}

pub(crate) const FIREWALL_RULES: &str = "/etc/platform-firewall/rules.nft";

pub(crate) const FIREWALL_UNIT_FILE: &str = "/etc/systemd/system/platform-firewall.service";

/// The same host with the firewall render gives a host where platform ports listen.
pub(crate) fn with_firewall(mut desired: DesiredHost) -> DesiredHost {
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

/// The handlers a transcript shows apply running, in order: daemon-reloads, reloads, and
/// restarts, whether plain or of a health-checked platform service.
pub(crate) fn handlers_run(fake: &FakeTransport) -> Vec<Handler> {
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
                Some(restart(unit.trim_end_matches(".service")))
            } else {
                None
            }
        })
        .collect()
}

pub(crate) const DB_PASSWORD: &str = "s3cret-db";

pub(crate) const MQ_PASSWORD: &str = "s3cret-mq";
