//! The `monitoring` role: Prometheus on its host scraping every service, host and engine, the
//! exporters and firewall openings that takes, the alert rules (checked by promtool), and nothing
//! of it without the role.

use std::process::Command;

use provisioner::desired::{DesiredHost, Handler};
use provisioner::render::inventory::Inventory;
use provisioner::render::render_to_dir;

use crate::render::{
    assert_has_lines, example_env, file, host, platform, text, try_render, workspace,
};

fn hosts_of(inventory_text: &str) -> Result<Vec<DesiredHost>, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("inventory.toml");
    std::fs::write(&path, inventory_text).expect("write");
    let env = example_env();
    let inventory = Inventory::load(&path, &env, &platform()).map_err(|error| error.to_string())?;
    try_render(&inventory, &env).map_err(|error| error.to_string())
}

fn committed(name: &str) -> String {
    std::fs::read_to_string(workspace().join(name)).expect("read")
}

#[test]
fn without_the_role_nothing_is_scraped_and_nothing_opens() {
    let hosts = hosts_of(&committed("inventory.toml")).expect("renders");
    for host in &hosts {
        assert!(
            host.packages.iter().all(|p| !p.starts_with("prometheus")),
            "{}: {:?}",
            host.name,
            host.packages
        );
        assert!(host.files.iter().all(|f| !f.path.contains("prometheus")));
    }
    let billing = host(&hosts, "billing-vm");
    assert_eq!(
        text(file(billing, "/etc/rabbitmq/enabled_plugins")).trim(),
        "[rabbitmq_management]."
    );
    assert!(text(file(billing, "/etc/billing/billing.env"))
        .contains("HEALTH_LISTEN_ADDR=127.0.0.1:8081"));
    let gateway = host(&hosts, "gateway-vm");
    assert!(!text(file(gateway, "/etc/gateway/gateway.env")).contains("METRICS_LISTEN_ADDR"));
}

#[test]
fn prometheus_scrapes_every_service_host_and_engine_through_ports_opened_to_it_alone() {
    let hosts = hosts_of(&committed("inventory-pg-ha.toml")).expect("renders");
    let monitoring = host(&hosts, "gateway-vm");
    assert!(monitoring.packages.contains(&"prometheus".to_owned()));
    assert!(monitoring.host_units.contains(&"prometheus".to_owned()));
    let config = file(monitoring, "/etc/prometheus/prometheus.yml");
    assert_eq!(config.on_change, [Handler::Reload("prometheus".into())]);
    let yaml = text(config);
    for (job, target) in [
        ("gateway", "127.0.0.1:9464"),
        ("inventory", "192.168.56.11:8080"),
        ("billing", "192.168.56.12:8081"),
        ("node", "127.0.0.1:9100"),
        ("node", "192.168.56.15:9100"),
        ("postgres", "192.168.56.13:9187"),
        ("rabbitmq", "192.168.56.12:15692"),
    ] {
        assert!(
            yaml.contains(&format!("- job_name: {job}\n")),
            "{job}: {yaml}"
        );
        assert!(
            yaml.contains(&format!("- targets: [\"{target}\"]")),
            "{target}: {yaml}"
        );
    }
    assert_has_lines(
        yaml,
        &[
            "metrics_path: /metrics/detailed",
            "family: [\"queue_coarse_metrics\"]",
            "vhost: [\"billing_vhost\"]",
        ],
    );
    let rules = text(file(monitoring, "/etc/prometheus/platform-alerts.yml"));
    for alert in [
        "ServiceDown",
        "BillingQueueGrowing",
        "DeadLetters",
        "DiskFilling",
    ] {
        assert!(rules.contains(&format!("- alert: {alert}\n")), "{alert}");
    }
    assert!(
        rules.contains("queue=\"billing_queue\"")
            && rules.contains("queue=\"billing_queue.dead-letter\"")
    );

    for member in &hosts {
        assert!(
            member
                .packages
                .contains(&"prometheus-node-exporter".to_owned())
                && member
                    .host_units
                    .contains(&"prometheus-node-exporter".to_owned()),
            "{}",
            member.name
        );
    }
    let node4 = host(&hosts, "node4-vm");
    assert!(node4
        .host_units
        .contains(&"prometheus-postgres-exporter".to_owned()));
    assert_has_lines(
        text(file(node4, "/etc/default/prometheus-postgres-exporter")),
        &["DATA_SOURCE_NAME='user=postgres host=/run/postgresql dbname=postgres'"],
    );
    let dropin = file(
        node4,
        "/etc/systemd/system/prometheus-postgres-exporter.service.d/provision.conf",
    );
    assert_eq!(
        dropin.on_change,
        [
            Handler::DaemonReload,
            Handler::Restart("prometheus-postgres-exporter".into())
        ]
    );
    assert_has_lines(
        text(file(node4, "/etc/platform-firewall/rules.nft")),
        &[
            "tcp dport 9100 ip saddr { 192.168.56.10 } accept",
            "tcp dport 9187 ip saddr { 192.168.56.10 } accept",
        ],
    );

    // Billing's health and metrics listener leaves loopback, for Prometheus alone.
    let billing = host(&hosts, "billing-vm");
    assert!(
        text(file(billing, "/etc/billing/billing.env")).contains("HEALTH_LISTEN_ADDR=0.0.0.0:8081")
    );
    assert_eq!(
        text(file(billing, "/etc/rabbitmq/enabled_plugins")).trim(),
        "[rabbitmq_management,rabbitmq_prometheus]."
    );
    assert_has_lines(
        text(file(billing, "/etc/platform-firewall/rules.nft")),
        &[
            "tcp dport 8081 ip saddr { 192.168.56.10 } accept",
            "tcp dport 15692 ip saddr { 192.168.56.10 } accept",
        ],
    );
    // The gateway's metrics have a listener of their own, never its public port; Prometheus is on
    // the same host here, so loopback; Prometheus's own port answers its host alone.
    let gateway_env = text(file(monitoring, "/etc/gateway/gateway.env"));
    assert!(
        gateway_env.contains("METRICS_LISTEN_ADDR=127.0.0.1:9464\n"),
        "{gateway_env}"
    );
    let rules_nft = text(file(monitoring, "/etc/platform-firewall/rules.nft"));
    assert!(
        !rules_nft.contains("tcp dport 9090 ip saddr"),
        "{rules_nft}"
    );
    assert_has_lines(rules_nft, &["tcp dport 9090 reject with tcp reset"]);
}

#[test]
fn a_monitoring_host_elsewhere_gets_the_gateways_metrics_listener_on_every_interface() {
    let text_in = committed("inventory-pg-ha.toml")
        .replace(
            "roles = [\"gateway\", \"monitoring\"]",
            "roles = [\"gateway\"]",
        )
        .replacen(
            "roles = [\"patroni\", \"etcd\"]",
            "roles = [\"patroni\", \"etcd\", \"monitoring\"]",
            1,
        );
    let hosts = hosts_of(&text_in).expect("renders");
    let gateway = host(&hosts, "gateway-vm");
    assert!(text(file(gateway, "/etc/gateway/gateway.env"))
        .contains("METRICS_LISTEN_ADDR=0.0.0.0:9464\n"));
    assert_has_lines(
        text(file(gateway, "/etc/platform-firewall/rules.nft")),
        &["tcp dport 9464 ip saddr { 192.168.56.13 } accept"],
    );
    // One Prometheus, not two.
    let twice = text_in.replace(
        "roles = [\"gateway\"]",
        "roles = [\"gateway\", \"monitoring\"]",
    );
    let message = hosts_of(&twice).expect_err("refused");
    assert!(message.contains("more than one host"), "{message}");
}

/// Prometheus's own checker (`promtool`, Debian's prometheus package, which scripts/prerequisites
/// installs) accepts the rendered configuration and alert rules.
#[test]
fn promtool_accepts_the_configuration_and_the_rules() {
    let hosts = hosts_of(&committed("inventory-pg-ha.toml")).expect("renders");
    let dir = tempfile::tempdir().expect("temp dir");
    render_to_dir(&hosts, dir.path()).expect("rendered");
    let etc = dir.path().join("gateway-vm/etc/prometheus");
    let rules = etc.join("platform-alerts.yml");
    promtool("rules", &rules);
    // The configuration names the rules and the TLS files (inventory is scraped over HTTPS)
    // where they go on the host; here, as rendered.
    let config = std::fs::read_to_string(etc.join("prometheus.yml"))
        .expect("config")
        .replace(
            "/etc/prometheus/platform-alerts.yml",
            &rules.display().to_string(),
        )
        .replace(
            "/etc/platform-tls/",
            &format!(
                "{}/",
                dir.path().join("gateway-vm/etc/platform-tls").display()
            ),
        );
    assert!(config.contains("scheme: https"), "{config}");
    let config_path = etc.join("checked.yml");
    std::fs::write(&config_path, config).expect("write");
    promtool("config", &config_path);
}

/// `promtool check WHAT FILE` must succeed.
fn promtool(what: &str, file: &std::path::Path) {
    let output = Command::new("promtool")
        .arg("check")
        .arg(what)
        .arg(file)
        .output()
        .expect("promtool runs (scripts/prerequisites installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
