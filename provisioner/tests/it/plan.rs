//! Plan without a network: what changes, what restarts, and that secrets only travel on stdin,
//! against hand-built facts and a scripted fake transport.

use provisioner::converge::facts::{self, HostFacts, Timestamp, UnitFact};
use provisioner::converge::plan::{plan, Action, Change, ChangeKind, Phase};
use provisioner::converge::scram;
use provisioner::desired::{DesiredHost, Handler, RabbitMqCluster};
use provisioner::pki::Subject;

use crate::fixtures::*;

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
    // PostgreSQL's objects with the backing phase; RabbitMQ's once its restarts are done.
    let phases: Vec<Phase> = plan.changes.iter().map(|change| change.phase).collect();
    assert_eq!(
        phases,
        [Phase::Backing, Phase::Backing, Phase::Broker, Phase::Broker]
    );
}

#[test]
fn a_broker_node_outside_its_cluster_joins_it_and_takes_the_clusters_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = desired_host(dir.path());
    desired.rabbitmq.as_mut().expect("rabbitmq").cluster = Some(RabbitMqCluster {
        node: "rabbit@b".into(),
        seed: "rabbit@a".into(),
        nodes: vec!["rabbit@a".into(), "rabbit@b".into(), "rabbit@c".into()],
    });
    // A node Debian's package booted alone: its own cluster, none of the platform's objects.
    let mut facts = converged(&desired);
    let rabbitmq = facts.rabbitmq.as_mut().expect("rabbitmq");
    rabbitmq.vhosts.clear();
    rabbitmq.users.clear();
    rabbitmq.cluster_nodes = ["rabbit@b".to_string()].into();
    let plan = plan(&desired, &facts);
    let joins: Vec<(&str, &str, Phase)> = plan
        .changes
        .iter()
        .map(|change| (change.target.as_str(), change.detail.as_str(), change.phase))
        .collect();
    assert_eq!(
        joins,
        [(
            "cluster node rabbit@b",
            "in a cluster of rabbit@b → joins rabbit@a (reset first; users, vhost and permissions come from the cluster)",
            Phase::Broker
        )]
    );
    assert_eq!(plan.changes[0].action, Action::JoinCluster);

    // A member: nothing to do, its objects being the cluster's.
    let mut member = converged(&desired);
    member.rabbitmq.as_mut().expect("rabbitmq").cluster_nodes =
        ["rabbit@a".to_string(), "rabbit@b".into()].into();
    assert!(plan_of(&desired, &member).is_empty());

    // The first node never joins anything: it converges the objects.
    desired.rabbitmq.as_mut().expect("rabbitmq").cluster = Some(RabbitMqCluster {
        node: "rabbit@a".into(),
        seed: "rabbit@a".into(),
        nodes: vec!["rabbit@a".into(), "rabbit@b".into(), "rabbit@c".into()],
    });
    let actions: Vec<Action> = plan_of(&desired, &facts)
        .iter()
        .map(|change| change.action.clone())
        .collect();
    assert!(!actions.contains(&Action::JoinCluster), "{actions:?}");
    assert!(actions.contains(&Action::AddVhost), "{actions:?}");
}

fn plan_of(desired: &DesiredHost, facts: &HostFacts) -> Vec<Change> {
    plan(desired, facts).changes
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
    let output = facts::script_output(&desired, &expected).replace(
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
fn a_service_older_than_its_env_file_missed_its_restart_and_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    // An apply wrote inventory's env file, then died before the restart: the file is as desired,
    // but the process still runs with the old one.
    facts
        .started
        .insert("inventory".into(), Timestamp(1_000_000_000_000));
    facts
        .started
        .insert("billing".into(), Timestamp(1_000_000_000_000));
    facts.modified.insert(
        "/etc/inventory/inventory.env".into(),
        Timestamp(1_000_000_000_001),
    );
    facts.modified.insert(
        "/etc/billing/billing.env".into(),
        Timestamp(999_999_999_999),
    );
    let planned = plan(&desired, &facts);
    assert_eq!(
        targets(&planned),
        [(ChangeKind::Service, "inventory".to_string())]
    );
    assert_eq!(planned.restarts, ["inventory"]);
    let detail = &planned.changes[0].detail;
    assert!(
        detail.contains("/etc/inventory/inventory.env") && detail.contains("lost"),
        "{detail}"
    );

    // Started after the write: nothing to do.
    facts
        .started
        .insert("inventory".into(), Timestamp(1_000_000_000_002));
    assert!(plan(&desired, &facts).is_empty());

    // A binary pushed after the process started counts the same.
    facts.modified.insert(
        "/usr/local/bin/billing".into(),
        Timestamp(1_000_000_000_005),
    );
    let planned = plan(&desired, &facts);
    assert_eq!(planned.restarts, ["billing"]);
}

#[test]
fn a_daemon_older_than_its_configuration_missed_its_restart_and_is_restarted_before_the_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = desired_host(dir.path());
    desired.files.push(text(
        "/etc/rabbitmq/rabbitmq.conf",
        "listeners.tcp.default = 5672\n",
        0o644,
        "root",
        vec![restart("rabbitmq-server")],
    ));
    assert_eq!(
        desired.restarted_units(),
        ["inventory", "billing", "rabbitmq-server"]
    );
    let mut facts = converged(&desired);
    // An apply wrote RabbitMQ's configuration (a new cluster cookie, say) and died before
    // restarting it: the broker still runs with the old one.
    facts
        .started
        .insert("rabbitmq-server".into(), Timestamp(1_000_000_000_000));
    facts.modified.insert(
        "/etc/rabbitmq/rabbitmq.conf".into(),
        Timestamp(1_000_000_000_001),
    );
    let planned = plan(&desired, &facts);
    assert_eq!(
        targets(&planned),
        [(ChangeKind::Service, "rabbitmq-server".to_string())]
    );
    assert_eq!(planned.changes[0].phase, Phase::Backing);
    assert!(planned.restarts.is_empty(), "no platform service restarts");
    assert_eq!(planned.handlers, [restart("rabbitmq-server")].into());
    assert!(
        planned.changes[0]
            .detail
            .contains("/etc/rabbitmq/rabbitmq.conf"),
        "{}",
        planned.changes[0].detail
    );
    // Restarted after the write: nothing to do.
    facts
        .started
        .insert("rabbitmq-server".into(), Timestamp(1_000_000_000_002));
    assert!(plan(&desired, &facts).is_empty());
}

#[test]
fn timestamps_read_what_date_and_stat_print() {
    assert_eq!(
        Timestamp::parse("1796204508.123456000"),
        Some(Timestamp(1_796_204_508_123_456_000))
    );
    assert_eq!(
        Timestamp::parse("1796204508.5"),
        Some(Timestamp(1_796_204_508_500_000_000))
    );
    assert_eq!(Timestamp::parse("17"), Some(Timestamp(17_000_000_000)));
    for bad in ["", "x", "1.", "1.1234567890", "-1.0", "1.2e3"] {
        assert_eq!(Timestamp::parse(bad), None, "{bad:?}");
    }
    let time = Timestamp(1_796_204_508_000_000_042);
    assert_eq!(time.to_string(), "1796204508.000000042");
    assert_eq!(Timestamp::parse(&time.to_string()), Some(time));
}

/// A certificate on a host is described, not shown as PEM: why it changes (other names, about
/// to expire, another one), for whom and until when.
#[test]
fn a_certificate_change_says_why_and_never_shows_pem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = desired_host(dir.path());
    let hosts = [Subject::of("billing-vm", "10.0.0.13")];
    let ours = provisioner::pki::Pki::ephemeral(&hosts);
    let path = "/etc/platform-tls/rabbitmq/host.crt";
    let cert = ours.host("billing-vm").expect("issued").cert_pem.clone();
    desired.files.push(text(
        path,
        &cert,
        0o644,
        "root",
        vec![restart("rabbitmq-server")],
    ));
    let mut facts = converged(&desired);
    assert!(plan(&desired, &facts).changes.is_empty());

    // Issued for another address.
    let moved = provisioner::pki::Pki::ephemeral(&[Subject::of("billing-vm", "10.0.0.99")]);
    changed_file(
        &mut facts,
        path,
        &moved.host("billing-vm").expect("issued").cert_pem,
    );
    let planned = plan(&desired, &facts);
    assert_eq!(targets(&planned), [(ChangeKind::File, path.to_owned())]);
    let detail = &planned.changes[0].detail;
    assert!(
        detail.starts_with("certificate renewed: it was issued for 10.0.0.99, billing-vm; now billing-vm (10.0.0.13, billing-vm), valid until "),
        "{detail}"
    );
    assert!(!detail.contains("BEGIN"), "{detail}");
    assert!(planned.handlers.contains(&restart("rabbitmq-server")));

    // Missing.
    facts.files.remove(path);
    let detail = plan(&desired, &facts).changes[0].detail.clone();
    assert!(
        detail.starts_with(
            "create (mode 644 root:root): certificate for billing-vm (10.0.0.13, billing-vm)"
        ),
        "{detail}"
    );
}
