//! Apply without a network: what runs in which order, what restarts, what rolls back, against a
//! scripted fake transport answering with hand-built facts.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use provisioner::converge::apply::{apply_all, HostReport, Rollout};
use provisioner::converge::facts::{
    self, HostFacts, PostgresFacts, RabbitMqFacts, Timestamp, UnitFact,
};
use provisioner::converge::plan::{plan, Action, ChangeKind, Phase};
use provisioner::converge::transport::fake::FakeTransport;
use provisioner::converge::transport::Transport;
use provisioner::desired::{DesiredHost, Handler};

use crate::fixtures::*;

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
            ..RabbitMqFacts::default()
        }),
        ..HostFacts::default()
    };
    let fake = FakeTransport::new("app-vm");
    fake.answer_times("sh -s", 1, 0, &facts::script_output(&desired, &bare));
    fake.answer("sh -s", 0, &facts::script_output(&desired, &installed));
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
    fake.answer_times("sh -s", 1, 0, &facts::script_output(&desired, &bare));
    let mut installed = bare.clone();
    installed.packages = desired.packages.iter().cloned().collect();
    installed.pg_version = Some("15".into());
    installed.postgres = converged(&desired).postgres;
    installed.rabbitmq = converged(&desired).rabbitmq;
    fake.answer("sh -s", 0, &facts::script_output(&desired, &installed));
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
    fake.answer_times("sh -s", 1, 0, &facts::script_output(&desired, &bare));
    fake.answer("sh -s", 0, &facts::script_output(&desired, &installed));
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

#[test]
fn a_service_that_missed_its_restart_is_restarted_and_health_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    facts
        .started
        .insert("inventory".into(), Timestamp(1_000_000_000_000));
    facts.modified.insert(
        "/etc/inventory/inventory.env".into(),
        Timestamp(2_000_000_000_000),
    );
    let fake = host_reporting(&desired, &facts);
    let report = apply_one(&desired, &fake);
    assert_eq!(
        (report.changed, report.failed),
        (1, 0),
        "{:?}",
        report.error
    );
    assert_eq!(report.restarted, ["inventory"]);
    let transcript = fake.transcript();
    assert!(
        transcript.contains("systemctl restart inventory"),
        "{transcript}"
    );
    assert!(
        !transcript.contains("restart billing")
            && !transcript.contains("/etc/inventory/inventory.env"),
        "nothing else restarted, nothing rewritten: {transcript}"
    );
}

/// Three hosts like `desired_host`, each with a new billing binary to roll out; the second one's
/// new binary never answers its health check.
fn rollout(dir: &std::path::Path, rollout: Rollout) -> (Vec<HostReport>, Vec<FakeTransport>) {
    rollout_with(dir, rollout, |fakes| {
        fakes[1].answer_times("http://127.0.0.1:8081/health", 1, 1, "");
    })
}

/// The three hosts of [`rollout`], their fake hosts scripted by `script`.
fn rollout_with(
    dir: &std::path::Path,
    rollout: Rollout,
    script: impl Fn(&[FakeTransport]),
) -> (Vec<HostReport>, Vec<FakeTransport>) {
    let hosts: Vec<DesiredHost> = ["app-1", "app-2", "app-3"]
        .into_iter()
        .map(|name| {
            let mut desired = desired_host(dir);
            desired.name = name.into();
            desired
        })
        .collect();
    let fakes: Vec<FakeTransport> = hosts
        .iter()
        .map(|desired| {
            let mut facts = converged(desired);
            facts
                .binaries
                .insert("/usr/local/bin/billing".into(), "oldsha".into());
            host_reporting(desired, &facts)
        })
        .collect();
    script(&fakes);
    let pairs: Vec<(&DesiredHost, Result<&dyn Transport, String>)> = hosts
        .iter()
        .zip(&fakes)
        .map(|(desired, fake)| (desired, Ok(fake as &dyn Transport)))
        .collect();
    let reports = apply_all(&pairs, NonZeroUsize::new(4).expect("4"), rollout);
    (reports, fakes)
}

fn serial(hosts: usize, max_fail: usize) -> Rollout {
    Rollout {
        serial: NonZeroUsize::new(hosts),
        max_fail,
    }
}

#[test]
fn a_rolling_deploy_stops_at_the_first_failure_and_leaves_the_hosts_after_it_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, fakes) = rollout(dir.path(), serial(1, 0));
    assert_eq!(
        (reports[0].failed, reports[0].restarted.as_slice()),
        (0, ["billing".to_string()].as_slice()),
        "{:?}",
        reports[0].error
    );
    assert_eq!(
        reports[1].rolled_back,
        ["billing"],
        "the failed host is rolled back"
    );
    assert_eq!(reports[1].failed, 1);
    let third = &reports[2];
    assert!(third.restarted.is_empty(), "{third:?}");
    assert_eq!(third.failed, 0, "{third:?}");
    let error = third.error.as_deref().expect("said why");
    assert!(
        error.contains("rollout stopped after 1 host(s) failed"),
        "{error}"
    );
    let transcript = fakes[2].transcript();
    assert!(
        !transcript.contains("/usr/local/bin/billing") && !transcript.contains("systemctl restart"),
        "the third host keeps what it runs: {transcript}"
    );
    // Its first phase (databases and broker) ran before any service was touched anywhere.
    assert!(transcript.contains("sh -s"), "{transcript}");
}

#[test]
fn a_rolling_deploy_goes_on_while_failures_stay_within_max_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, _) = rollout(dir.path(), serial(1, 1));
    assert_eq!(reports[1].rolled_back, ["billing"]);
    assert_eq!(reports[2].restarted, ["billing"], "{:?}", reports[2].error);
    assert_eq!(reports[2].error, None);
}

#[test]
fn without_serial_every_host_is_updated_at_once_whatever_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, _) = rollout(dir.path(), Rollout::default());
    assert_eq!(reports[0].restarted, ["billing"]);
    assert_eq!(reports[1].rolled_back, ["billing"]);
    assert_eq!(reports[2].restarted, ["billing"]);
}

#[test]
fn a_rolling_deploy_waits_for_readiness_and_stops_when_a_service_never_gets_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first host's billing restarts healthy but never reaches its dependencies.
    let (reports, fakes) = rollout_with(dir.path(), serial(1, 0), |fakes| {
        fakes[0].answer_times("http://127.0.0.1:8081/ready", 100, 1, "");
    });
    let first = &reports[0];
    assert_eq!(first.restarted, ["billing"]);
    assert!(
        first.rolled_back.is_empty(),
        "healthy, so not rolled back: {first:?}"
    );
    assert_eq!(first.failed, 1);
    let error = first.error.as_deref().expect("said why");
    assert!(
        error.contains("billing is healthy but not ready"),
        "{error}"
    );
    for (report, fake) in reports.iter().zip(&fakes).skip(1) {
        assert!(report.restarted.is_empty(), "{report:?}");
        assert!(
            !fake.transcript().contains("systemctl restart"),
            "{}",
            fake.transcript()
        );
    }

    // Ready at once: the rollout goes through every host, asking each one's readiness.
    let (reports, fakes) = rollout_with(dir.path(), serial(1, 0), |_| {});
    for (report, fake) in reports.iter().zip(&fakes) {
        assert_eq!(report.restarted, ["billing"], "{:?}", report.error);
        assert!(fake.transcript().contains("http://127.0.0.1:8081/ready"));
    }
}

/// inventory with a socket unit, as render gives a service others call.
fn with_inventory_socket(mut desired: DesiredHost) -> DesiredHost {
    const SOCKET: &str = "/etc/systemd/system/inventory.socket";
    desired.files.push(text(
        SOCKET,
        "[Socket]\nListenStream=0.0.0.0:8080\n",
        0o644,
        "root",
        vec![Handler::DaemonReload, restart("inventory")],
    ));
    desired.services[0].socket = Some(SOCKET.into());
    desired
}

/// Applies `desired` to a host with `facts`, expecting inventory alone to restart, without a
/// failure; the transcript of what ran.
fn apply_restarting_inventory(desired: &DesiredHost, facts: &HostFacts) -> String {
    let fake = host_reporting(desired, facts);
    let report = apply_one(desired, &fake);
    assert_eq!(
        (report.failed, report.restarted.clone()),
        (0, vec!["inventory".to_owned()]),
        "{:?}",
        report.error
    );
    fake.transcript()
}

#[test]
fn a_socket_activated_service_restarts_with_its_socket_kept_unless_the_socket_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = with_inventory_socket(desired_host(dir.path()));

    // A new binary: the socket stays open through the restart (started first where it is not
    // active yet, the service stopped so that it can take the port).
    let mut facts = converged(&desired);
    facts
        .binaries
        .insert("/usr/local/bin/inventory".into(), "oldsha".into());
    let transcript = apply_restarting_inventory(&desired, &facts);
    assert!(
        transcript.contains(
            "systemctl is-active --quiet inventory.socket || systemctl stop inventory.service; systemctl restart inventory.service"
        ),
        "{transcript}"
    );
    assert!(
        !transcript.contains("stop inventory.socket"),
        "{transcript}"
    );

    // A rewritten socket unit (another port): closed and opened again with the service.
    let mut facts = converged(&desired);
    changed_file(
        &mut facts,
        "/etc/systemd/system/inventory.socket",
        "[Socket]\nListenStream=0.0.0.0:9090\n",
    );
    let transcript = apply_restarting_inventory(&desired, &facts);
    let reload = transcript
        .find("systemctl daemon-reload")
        .expect("daemon-reload");
    let rebind = transcript
        .find("systemctl stop inventory.socket inventory.service && systemctl start inventory.service")
        .expect("the socket is rebound");
    assert!(reload < rebind, "{transcript}");
    // billing, which has no socket, restarts as before when it restarts.
    assert!(!transcript.contains("billing.socket"), "{transcript}");
}

#[test]
fn provision_stop_also_stops_a_services_socket_which_would_start_it_again() {
    let stop = provisioner::cli::systemctl_command("stop", "gateway");
    assert_eq!(
        stop,
        "if systemctl cat gateway.socket >/dev/null 2>&1; then systemctl stop gateway.socket gateway; \
         else systemctl stop gateway; fi"
    );
    // Restarting keeps the socket: connections wait in it meanwhile.
    assert_eq!(
        provisioner::cli::systemctl_command("restart", "gateway"),
        "systemctl restart gateway"
    );
}

/// A service that serves HTTPS is asked for its health with its own key, which only it and root
/// may read: that curl runs with sudo; a plain one's runs as the SSH user.
#[test]
fn the_health_of_a_service_serving_https_is_asked_as_root_with_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = desired_host(dir.path());
    desired.services[0].health_url = "https://10.0.0.11:8080/health".into();
    desired.services[0].tls = Some(provisioner::desired::ClientTls {
        ca_file: "/etc/platform-tls/inventory/ca.crt".into(),
        cert_file: "/etc/platform-tls/inventory/host.crt".into(),
        key_file: "/etc/platform-tls/inventory/host.key".into(),
    });
    let mut facts = converged(&desired);
    changed_file(&mut facts, "/etc/inventory/inventory.env", "OLD=1\n");
    changed_file(&mut facts, "/etc/billing/billing.env", "OLD=1\n");
    let fake = host_reporting(&desired, &facts);
    fake.answer("while [ $i -lt", 0, "ok");
    let report = apply_one(&desired, &fake);
    assert_eq!((report.failed, report.error.as_deref()), (0, None));
    let health: Vec<(bool, String)> = fake
        .calls()
        .into_iter()
        .filter(|call| call.command.contains("curl -fsS -m 2"))
        .map(|call| (call.sudo, call.command))
        .collect();
    assert_eq!(health.len(), 2, "{}", fake.transcript());
    assert!(
        health[0].0
            && health[0].1.contains(
                "curl -fsS -m 2 --cacert /etc/platform-tls/inventory/ca.crt --cert \
                 /etc/platform-tls/inventory/host.crt --key /etc/platform-tls/inventory/host.key \
                 https://10.0.0.11:8080/health"
            ),
        "{health:?}"
    );
    assert!(
        !health[1].0
            && health[1]
                .1
                .contains("curl -fsS -m 2 http://127.0.0.1:8081/health"),
        "{health:?}"
    );
}
