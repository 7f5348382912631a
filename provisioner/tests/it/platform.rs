//! A fourth service added the way ARCHITECTURE.md says: an entry in a copy of `platform.toml` and
//! one template (`env/notification.env`), nothing else. `notification` consumes a queue and looks
//! movies up in the inventory API; the test proves it is rendered (unit, env file, binary, user,
//! firewall, broker access), planned on a bare host, and ordered after what it calls.

use std::path::{Path, PathBuf};

use provisioner::converge::facts::HostFacts;
use provisioner::converge::plan::{self, Action, ChangeKind};
use provisioner::render::binaries::{Arch, BinarySet};
use provisioner::render::desired_hosts;
use provisioner::render::env_file::EnvFile;
use provisioner::render::inventory::Inventory;
use provisioner::render::platform::Platform;

use crate::render::{copy_dir, file, host, test_pki, text, workspace};

const NOTIFICATION: &str = r#"
[[services]]
name = "notification"
summary = "notification worker (consumes notification events, looks movies up)"
port = "notification_health_port"
public = false
health = "/health"
ready = "/ready"
broker = true
calls = ["inventory"]
"#;

const NOTIFICATION_ENV: &str = "\
# Managed by provision ({{ host }}): environment of notification.service.
AMQP_URL={{ amqp_url }}
{%- if amqp_tls %}
AMQP_CA_FILE={{ tls.ca_file }}
{%- endif %}
INVENTORY_URL={{ inventory_urls | join(sep=\",\") }}
{%- if inventory_tls %}
INVENTORY_CA_FILE={{ tls.ca_file }}
INVENTORY_CLIENT_CERT_FILE={{ tls.cert_file }}
INVENTORY_CLIENT_KEY_FILE={{ tls.key_file }}
{%- endif %}
HEALTH_LISTEN_ADDR={{ listen_addr }}
RUST_LOG={{ rust_log }}
";

/// The committed platform, inventory and templates, plus notification: on the gateway's host
/// (which the inventory API already serves) and on a fourth, bare machine.
struct FourServices {
    _dir: tempfile::TempDir,
    templates: PathBuf,
    platform: Platform,
    env: EnvFile,
    inventory: Inventory,
}

fn four_services() -> FourServices {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    // The description and the template: the only additions.
    let description = std::fs::read_to_string(workspace().join("platform.toml")).expect("read");
    std::fs::write(root.join("platform.toml"), description + NOTIFICATION).expect("write");
    copy_dir(&workspace().join("templates"), &root.join("templates"));
    std::fs::write(
        root.join("templates/env/notification.env"),
        NOTIFICATION_ENV,
    )
    .expect("write");
    // Where it runs: the inventory's business, as for any service.
    let inventory = std::fs::read_to_string(workspace().join("inventory.toml"))
        .expect("read")
        .replace(
            "roles = [\"gateway\"]",
            "roles = [\"gateway\", \"notification\"]",
        )
        .replace(
            "[settings]\n",
            "[[hosts]]\nname = \"notify-vm\"\naddress = \"192.168.56.13\"\nuser = \"vagrant\"\n\
             private_key = \"key\"\nroles = [\"notification\"]\n\n[settings]\n\
             notification_health_port = 8082\n",
        );
    std::fs::write(root.join("inventory.toml"), inventory).expect("write");

    let platform = Platform::load(&root.join("platform.toml")).expect("valid description");
    let env = EnvFile::load(
        &workspace().join(".env.example"),
        &platform.required_variables(),
    )
    .expect("env");
    let inventory =
        Inventory::load(&root.join("inventory.toml"), &env, &platform).expect("valid inventory");
    FourServices {
        templates: root.join("templates"),
        _dir: dir,
        platform,
        env,
        inventory,
    }
}

/// Any ELF of this machine stands in for the four binaries.
fn stand_in_binaries(platform: &Platform, dir: &Path) -> BinarySet {
    let exe = std::env::current_exe().expect("own path");
    let names: Vec<&str> = platform
        .services()
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    for name in &names {
        std::fs::copy(&exe, dir.join(name)).expect("copy");
    }
    let arch = Arch::from_name(std::env::consts::ARCH).expect("known arch");
    BinarySet::from_dir(dir, &names, arch).expect("checked binaries")
}

#[test]
fn a_fourth_service_is_rendered_from_its_description_and_one_template() {
    let four = four_services();
    let names: Vec<&str> = four
        .platform
        .services()
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    assert_eq!(names, ["inventory", "billing", "gateway", "notification"]);
    assert!(
        four.platform.required_variables().len() == 8,
        "no database, no new variable"
    );

    let hosts = desired_hosts(
        &four.inventory,
        &four.env,
        &four.templates,
        None,
        &test_pki(&four.inventory),
    )
    .expect("renders");
    let notify = host(&hosts, "notify-vm");
    let unit = text(file(notify, "/etc/systemd/system/notification.service"));
    assert!(
        unit.contains("Description=Streaming platform: notification worker"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecStart=/usr/local/bin/notification\n"),
        "{unit}"
    );
    assert!(unit.contains("User=notification\n"), "{unit}");
    assert!(
        unit.contains("EnvironmentFile=/etc/notification/notification.env\n"),
        "{unit}"
    );
    assert!(
        unit.contains("After=network-online.target\n"),
        "nothing it needs runs on its own host: {unit}"
    );
    let env = text(file(notify, "/etc/notification/notification.env"));
    assert!(
        env.contains(
            "AMQP_URL=amqps://rabbitmq_user:rabbitmq_password@192.168.56.12:5671/billing_vhost\n"
        ),
        "{env}"
    );
    assert!(
        env.contains("INVENTORY_URL=https://192.168.56.11:8080\n"),
        "{env}"
    );
    // Over TLS to both: the platform CA, and its host's certificate for inventory.
    assert!(
        env.contains("AMQP_CA_FILE=/etc/platform-tls/notification/ca.crt\n"),
        "{env}"
    );
    assert!(
        env.contains("INVENTORY_CLIENT_KEY_FILE=/etc/platform-tls/notification/host.key\n"),
        "{env}"
    );
    let key = file(notify, "/etc/platform-tls/notification/host.key");
    assert_eq!((key.owner.as_str(), key.mode), ("notification", 0o600));
    assert!(
        env.contains("HEALTH_LISTEN_ADDR=127.0.0.1:8082\n"),
        "nobody calls it: {env}"
    );
    assert!(!env.contains("DATABASE_URL"), "it owns no database: {env}");
    assert_eq!(notify.system_users, ["notification"]);
    assert_eq!(notify.packages, ["curl"]);
    assert_eq!(
        notify.services[0].health_url,
        "http://127.0.0.1:8082/health"
    );
    assert_eq!(notify.services[0].ready_url, "http://127.0.0.1:8082/ready");
    assert!(notify.host_units.is_empty(), "no port of its own to filter");

    // The gateway's host runs it beside the gateway: units in start order.
    let gateway = host(&hosts, "gateway-vm");
    let units: Vec<&str> = gateway.services.iter().map(|s| s.unit.as_str()).collect();
    assert_eq!(units, ["gateway", "notification"]);

    // The inventory API is open to the new caller's hosts, and the broker to the new consumer's.
    let inventory_rules = text(file(
        host(&hosts, "inventory-vm"),
        "/etc/platform-firewall/rules.nft",
    ));
    assert!(
        inventory_rules.contains("tcp dport 8080 ip saddr { 192.168.56.10, 192.168.56.13 } accept"),
        "{inventory_rules}"
    );
    assert!(
        inventory_rules.contains("called by gateway and notification"),
        "{inventory_rules}"
    );
    let broker_rules = text(file(
        host(&hosts, "billing-vm"),
        "/etc/platform-firewall/rules.nft",
    ));
    assert!(
        broker_rules.contains("tcp dport 5671 ip saddr { 192.168.56.10, 192.168.56.13 } accept"),
        "{broker_rules}"
    );
}

#[test]
fn a_fourth_service_is_planned_and_ordered_after_what_it_calls() {
    let four = four_services();
    let bin = tempfile::tempdir().expect("temp dir");
    let binaries = stand_in_binaries(&four.platform, bin.path());
    // Notification moves beside the inventory API it calls.
    let text = std::fs::read_to_string(four.inventory.path.clone()).expect("read");
    let moved = text.replace(
        "roles = [\"inventory\", \"postgres\"]",
        "roles = [\"notification\", \"inventory\", \"postgres\"]",
    );
    assert_ne!(moved, text);
    std::fs::write(&four.inventory.path, moved).expect("write");
    let inventory =
        Inventory::load(&four.inventory.path, &four.env, &four.platform).expect("valid");
    let hosts = desired_hosts(
        &inventory,
        &four.env,
        &four.templates,
        Some(&binaries),
        &test_pki(&inventory),
    )
    .expect("renders");
    let desired = host(&hosts, "inventory-vm");

    let units: Vec<&str> = desired.services.iter().map(|s| s.unit.as_str()).collect();
    assert_eq!(units, ["inventory", "notification"], "after what it calls");
    let unit = std::str::from_utf8(
        desired
            .files
            .iter()
            .find(|file| file.path == "/etc/systemd/system/notification.service")
            .expect("unit")
            .content
            .bytes(),
    )
    .expect("UTF-8")
    .to_owned();
    assert!(
        unit.contains("After=network-online.target inventory.service\n"),
        "{unit}"
    );

    // On a bare host: user, unit, env file and binary to create, then started in order.
    let facts = HostFacts {
        arch: Some(std::env::consts::ARCH.into()),
        ..HostFacts::default()
    };
    let planned = plan::plan(desired, &facts);
    let has = |kind: ChangeKind, target: &str| {
        planned
            .changes
            .iter()
            .any(|change| change.kind == kind && change.target == target)
    };
    assert!(
        has(ChangeKind::User, "notification"),
        "{:?}",
        planned.changes
    );
    assert!(has(
        ChangeKind::Unit,
        "/etc/systemd/system/notification.service"
    ));
    assert!(has(ChangeKind::File, "/etc/notification/notification.env"));
    assert!(has(ChangeKind::Binary, "/usr/local/bin/notification"));
    assert!(planned
        .changes
        .iter()
        .any(|change| change.action == Action::StartService("notification".into())));
    assert_eq!(planned.restarts, ["inventory", "notification"]);
}
