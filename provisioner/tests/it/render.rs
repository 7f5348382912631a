//! The render half end to end: the committed `inventory.toml`, `.env.example` and `templates/`
//! become the expected files per host, and every rendered unit passes `systemd-analyze verify`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use provisioner::desired::{DesiredFile, DesiredHost, FileContent, Handler};
use provisioner::render::binaries::{self, Arch, BinarySet, Profile, MAX_GLIBC};
use provisioner::render::env_file::EnvFile;
use provisioner::render::inventory::Inventory;
use provisioner::render::platform::Platform;
use provisioner::render::{desired_hosts, render_to_dir, RenderError};

const PASSWORDS: [&str; 3] = [
    "inventory_password",
    "billing_password",
    "rabbitmq_password",
];

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_owned()
}

pub(crate) fn platform() -> Platform {
    Platform::load(&workspace().join("platform.toml")).expect("platform.toml is valid")
}

pub(crate) fn example_env() -> EnvFile {
    EnvFile::load(
        &workspace().join(".env.example"),
        &platform().required_variables(),
    )
    .expect(".env.example is complete")
}

fn default_inventory(env: &EnvFile) -> Inventory {
    Inventory::load(&workspace().join("inventory.toml"), env, &platform())
        .expect("inventory.toml is valid")
}

/// The services of the committed description, which are also their binaries' names.
pub(crate) fn services() -> Vec<String> {
    platform()
        .services()
        .iter()
        .map(|service| service.name.clone())
        .collect()
}

/// A platform CA and certificates for `inventory`'s hosts, made once per set of hosts in this
/// test binary, so that two renders of one inventory are alike.
pub(crate) fn test_pki(inventory: &Inventory) -> provisioner::pki::Pki {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Made = HashMap<Vec<provisioner::pki::Subject>, provisioner::pki::Pki>;
    static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
    let hosts = provisioner::render::tls::certificate_subjects(inventory);
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    made.entry(hosts.clone())
        .or_insert_with(|| provisioner::pki::Pki::ephemeral(&hosts))
        .clone()
}

/// The desired state of every host: the committed templates, no binaries, [`test_pki`].
pub(crate) fn try_render(
    inventory: &Inventory,
    env: &EnvFile,
) -> Result<Vec<DesiredHost>, RenderError> {
    desired_hosts(
        inventory,
        env,
        &workspace().join("templates"),
        None,
        &test_pki(inventory),
    )
}

fn render(inventory: &Inventory, env: &EnvFile) -> Vec<DesiredHost> {
    try_render(inventory, env).expect("renders")
}

fn default_hosts() -> Vec<DesiredHost> {
    let env = example_env();
    render(&default_inventory(&env), &env)
}

pub(crate) fn host<'a>(hosts: &'a [DesiredHost], name: &str) -> &'a DesiredHost {
    hosts
        .iter()
        .find(|host| host.name == name)
        .unwrap_or_else(|| panic!("no host {name}"))
}

pub(crate) fn file<'a>(host: &'a DesiredHost, path: &str) -> &'a DesiredFile {
    host.files
        .iter()
        .find(|file| file.path == path)
        .unwrap_or_else(|| panic!("{} has no {path}", host.name))
}

pub(crate) fn text(file: &DesiredFile) -> &str {
    std::str::from_utf8(file.content.bytes()).expect("UTF-8")
}

fn paths(host: &DesiredHost) -> Vec<&str> {
    let mut paths: Vec<&str> = host.files.iter().map(|file| file.path.as_str()).collect();
    paths.sort_unstable();
    paths
}

/// An `inventory.toml` variant written next to nothing (relative paths do not matter here).
fn inventory_from(text: &str, env: &EnvFile) -> Inventory {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("inventory.toml");
    std::fs::write(&path, text).expect("write");
    Inventory::load(&path, env, &platform()).expect("valid variant")
}

#[test]
fn each_host_gets_the_files_of_its_roles() {
    let hosts = default_hosts();
    let names: Vec<&str> = hosts.iter().map(|host| host.name.as_str()).collect();
    assert_eq!(names, ["gateway-vm", "inventory-vm", "billing-vm"]);

    let gateway = host(&hosts, "gateway-vm");
    assert_eq!(
        paths(gateway),
        [
            "/etc/gateway/gateway.env",
            // The CA it checks inventory and the broker with; its certificate for inventory.
            "/etc/platform-tls/gateway/ca.crt",
            "/etc/platform-tls/gateway/host.crt",
            "/etc/platform-tls/gateway/host.key",
            "/etc/systemd/system/gateway.service",
            "/etc/systemd/system/gateway.socket"
        ]
    );
    assert_eq!(gateway.packages, ["curl"], "no platform port to filter");
    assert!(gateway.host_units.is_empty());
    assert_eq!(gateway.system_users, ["gateway"]);
    assert!(gateway.postgres.is_none() && gateway.rabbitmq.is_none());

    let inventory = host(&hosts, "inventory-vm");
    assert_eq!(
        paths(inventory),
        [
            "/etc/inventory/inventory.env",
            "/etc/platform-firewall/rules.nft",
            // Inventory serves HTTPS to the gateway; its database has no remote client.
            "/etc/platform-tls/inventory/ca.crt",
            "/etc/platform-tls/inventory/host.crt",
            "/etc/platform-tls/inventory/host.key",
            "/etc/postgresql/{pg_version}/main/conf.d/60-provision.conf",
            "/etc/postgresql/{pg_version}/main/pg_hba.conf",
            "/etc/systemd/system/inventory.service",
            "/etc/systemd/system/inventory.socket",
            "/etc/systemd/system/platform-firewall.service",
            "/etc/systemd/system/postgresql@.service.d/provision-hardening.conf",
        ]
    );
    assert_eq!(inventory.packages, ["postgresql", "curl", "nftables"]);
    assert!(inventory.rabbitmq.is_none());

    let billing = host(&hosts, "billing-vm");
    assert_eq!(
        paths(billing),
        [
            "/etc/billing/billing.env",
            "/etc/platform-firewall/rules.nft",
            // AMQPS for the gateway; billing reaches its broker and database on loopback.
            "/etc/platform-tls/rabbitmq/ca.crt",
            "/etc/platform-tls/rabbitmq/host.crt",
            "/etc/platform-tls/rabbitmq/host.key",
            "/etc/postgresql/{pg_version}/main/conf.d/60-provision.conf",
            "/etc/postgresql/{pg_version}/main/pg_hba.conf",
            "/etc/rabbitmq/enabled_plugins",
            "/etc/rabbitmq/rabbitmq-env.conf",
            "/etc/rabbitmq/rabbitmq.conf",
            "/etc/systemd/system/billing.service",
            "/etc/systemd/system/epmd.socket.d/provision-loopback.conf",
            "/etc/systemd/system/platform-firewall.service",
            "/etc/systemd/system/postgresql@.service.d/provision-hardening.conf",
            "/etc/systemd/system/rabbitmq-server.service.d/provision-hardening.conf",
        ]
    );
    assert_eq!(
        billing.packages,
        ["postgresql", "rabbitmq-server", "curl", "nftables"]
    );
    let env = example_env();
    let inventory = default_inventory(&env);
    assert_eq!(
        inventory
            .host("billing-vm")
            .expect("billing-vm")
            .role_names(),
        ["billing", "postgres", "rabbitmq"]
    );
}

#[test]
fn env_files_are_secret_and_units_hold_no_secret() {
    for host in default_hosts() {
        for file in &host.files {
            let is_env = file.path.ends_with(".env");
            if file.path.ends_with(".key") {
                // The host's key, readable by its one user alone.
                assert!(matches!(file.content, FileContent::SecretText(_)));
                assert_eq!(file.mode, 0o600, "{}", file.path);
                let user = file
                    .path
                    .split('/')
                    .nth(3)
                    .expect("/etc/platform-tls/USER/");
                assert_eq!((file.owner.as_str(), file.group.as_str()), (user, user));
                assert!(
                    file.content
                        .bytes()
                        .starts_with(b"-----BEGIN PRIVATE KEY-----"),
                    "{}",
                    file.path
                );
            } else if is_env {
                assert!(
                    matches!(file.content, FileContent::SecretText(_)),
                    "{}",
                    file.path
                );
                assert_eq!(file.mode, 0o600, "{}", file.path);
                assert_eq!(file.owner, "root", "{}", file.path);
            } else {
                assert!(
                    matches!(file.content, FileContent::Text(_)),
                    "{}",
                    file.path
                );
                for password in PASSWORDS {
                    assert!(
                        !text(file).contains(password),
                        "{} holds {password}",
                        file.path
                    );
                }
            }
        }
        assert!(
            !format!("{host:?}").contains("_password"),
            "Debug of {} leaks",
            host.name
        );
    }
}

#[test]
fn env_files_point_each_service_at_its_database_and_broker() {
    let hosts = default_hosts();
    let gateway = text(file(host(&hosts, "gateway-vm"), "/etc/gateway/gateway.env")).to_owned();
    assert!(gateway.contains("LISTEN_ADDR=0.0.0.0:8080\n"), "{gateway}");
    // Both on other hosts: over TLS, checked against the platform CA, with its own
    // certificate for inventory.
    assert_has_lines(
        &gateway,
        &[
            "INVENTORY_URL=https://192.168.56.11:8080",
            "INVENTORY_CA_FILE=/etc/platform-tls/gateway/ca.crt",
            "INVENTORY_CLIENT_CERT_FILE=/etc/platform-tls/gateway/host.crt",
            "INVENTORY_CLIENT_KEY_FILE=/etc/platform-tls/gateway/host.key",
            "AMQP_URL=amqps://rabbitmq_user:rabbitmq_password@192.168.56.12:5671/billing_vhost",
            "AMQP_CA_FILE=/etc/platform-tls/gateway/ca.crt",
        ],
    );
    assert!(
        gateway.contains("BILLING_QUEUE=billing_queue\n"),
        "{gateway}"
    );
    assert!(gateway.contains("RUST_LOG=info\n"), "{gateway}");

    let inventory = text(file(
        host(&hosts, "inventory-vm"),
        "/etc/inventory/inventory.env",
    ));
    assert!(
        inventory.contains(
            "DATABASE_URL=postgres://inventory_user:inventory_password@127.0.0.1:5432/movies_db?sslmode=disable\n"
        ),
        "{inventory}"
    );
    // The gateway is on another host: the API must listen beyond loopback, over TLS, and
    // ask its callers for a certificate of the platform CA.
    assert_has_lines(
        inventory,
        &[
            "LISTEN_ADDR=0.0.0.0:8080",
            "TLS_CERT_FILE=/etc/platform-tls/inventory/host.crt",
            "TLS_KEY_FILE=/etc/platform-tls/inventory/host.key",
            "TLS_CLIENT_CA_FILE=/etc/platform-tls/inventory/ca.crt",
        ],
    );

    let billing = text(file(host(&hosts, "billing-vm"), "/etc/billing/billing.env"));
    assert!(
        billing.contains(
            "DATABASE_URL=postgres://billing_user:billing_password@127.0.0.1:5432/billing_db?sslmode=disable\n"
        ),
        "{billing}"
    );
    assert!(
        billing.contains(
            "AMQP_URL=amqp://rabbitmq_user:rabbitmq_password@127.0.0.1:5672/billing_vhost\n"
        ),
        "{billing}"
    );
    assert!(
        billing.contains("HEALTH_LISTEN_ADDR=127.0.0.1:8081\n"),
        "{billing}"
    );
    assert!(!billing.contains("CA_FILE"), "all on loopback: {billing}");
}

#[test]
fn passwords_and_vhosts_are_percent_encoded_in_urls() {
    let example = std::fs::read_to_string(workspace().join(".env.example")).expect("read");
    let tricky = example
        .replace(
            "BILLING_DB_PASSWORD=billing_password",
            "BILLING_DB_PASSWORD='p@ss:w/rd#1'",
        )
        .replace("RABBITMQ_VHOST=billing_vhost", "RABBITMQ_VHOST=/");
    let env = EnvFile::parse(
        Path::new("tricky.env"),
        &tricky,
        &platform().required_variables(),
    )
    .expect("parses");
    let hosts = render(&default_inventory(&env), &env);
    let billing = text(file(host(&hosts, "billing-vm"), "/etc/billing/billing.env"));
    assert!(
        billing.contains("postgres://billing_user:p%40ss%3Aw%2Frd%231@127.0.0.1:5432/billing_db?sslmode=disable\n"),
        "{billing}"
    );
    assert!(billing.contains("@127.0.0.1:5672/%2F\n"), "{billing}");
}

#[test]
fn units_run_as_their_own_user_from_their_env_file() {
    let hosts = default_hosts();
    for (host_name, service) in [
        ("gateway-vm", "gateway"),
        ("inventory-vm", "inventory"),
        ("billing-vm", "billing"),
    ] {
        let desired = host(&hosts, host_name);
        let unit = file(desired, &format!("/etc/systemd/system/{service}.service"));
        let body = text(unit);
        for line in [
            format!("User={service}"),
            format!("Group={service}"),
            format!("EnvironmentFile=/etc/{service}/{service}.env"),
            format!("ExecStart=/usr/local/bin/{service}"),
            "Restart=on-failure".to_owned(),
            "NoNewPrivileges=yes".to_owned(),
            "ProtectSystem=strict".to_owned(),
            "CapabilityBoundingSet=".to_owned(),
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "{service}.service lacks {line}:\n{body}"
            );
        }
        assert_eq!(unit.mode, 0o644);
        assert_eq!(
            unit.on_change,
            [Handler::DaemonReload, Handler::Restart(service.to_owned())]
        );
        let env = file(desired, &format!("/etc/{service}/{service}.env"));
        assert_eq!(env.on_change, [Handler::Restart(service.to_owned())]);
        assert_eq!(desired.system_users, [service]);
        assert_eq!(desired.services.len(), 1);
        assert_eq!(desired.services[0].unit, service);
    }
    let billing_unit = text(file(
        host(&hosts, "billing-vm"),
        "/etc/systemd/system/billing.service",
    ));
    assert!(
        billing_unit
            .contains("After=network-online.target postgresql.service rabbitmq-server.service\n"),
        "{billing_unit}"
    );
    let gateway_unit = text(file(
        host(&hosts, "gateway-vm"),
        "/etc/systemd/system/gateway.service",
    ));
    assert_has_lines(
        gateway_unit,
        &[
            "After=network-online.target gateway.socket",
            "Requires=gateway.socket",
        ],
    );
    assert!(!billing_unit.contains("Requires="), "{billing_unit}");
}

/// The services others call (inventory) or that are public (the gateway) get a socket unit
/// holding their port across restarts, on the address their env file gives; billing, which
/// nobody calls, binds its health port itself.
#[test]
fn called_and_public_services_listen_through_a_socket_unit() {
    let hosts = default_hosts();
    for (host_name, service, address) in [
        ("gateway-vm", "gateway", "0.0.0.0:8080"),
        ("inventory-vm", "inventory", "0.0.0.0:8080"),
    ] {
        let desired = host(&hosts, host_name);
        let socket = file(desired, &format!("/etc/systemd/system/{service}.socket"));
        assert_has_lines(
            text(socket),
            &[&format!("ListenStream={address}"), "NoDelay=true"],
        );
        assert_eq!(
            socket.on_change,
            [Handler::DaemonReload, Handler::Restart(service.to_owned())]
        );
        let env = text(file(desired, &format!("/etc/{service}/{service}.env")));
        assert_has_lines(env, &[&format!("LISTEN_ADDR={address}")]);
        assert_eq!(
            desired.services[0].socket.as_deref(),
            Some(socket.path.as_str())
        );
    }
    let billing = host(&hosts, "billing-vm");
    assert!(billing.services[0].socket.is_none());
    assert!(billing
        .files
        .iter()
        .all(|file| !file.path.ends_with(".socket")));
}

#[test]
fn health_urls_use_the_configured_ports_on_loopback_or_the_address_a_certificate_names() {
    let hosts = default_hosts();
    let url = |name: &str| host(&hosts, name).services[0].health_url.clone();
    assert_eq!(url("gateway-vm"), "http://127.0.0.1:8080/health");
    // Inventory serves HTTPS: asked at the address its certificate names, with its files.
    assert_eq!(url("inventory-vm"), "https://192.168.56.11:8080/health");
    let inventory = &host(&hosts, "inventory-vm").services[0];
    assert_eq!(
        inventory.curl_args(&inventory.ready_url),
        "--cacert /etc/platform-tls/inventory/ca.crt --cert /etc/platform-tls/inventory/host.crt \
         --key /etc/platform-tls/inventory/host.key https://192.168.56.11:8080/ready"
    );
    assert_eq!(url("billing-vm"), "http://127.0.0.1:8081/health");
    assert!(host(&hosts, "billing-vm").services[0].tls.is_none());
}

#[test]
fn local_databases_listen_on_localhost_and_admit_only_their_service() {
    let hosts = default_hosts();
    for (name, database, user) in [
        ("inventory-vm", "movies_db", "inventory_user"),
        ("billing-vm", "billing_db", "billing_user"),
    ] {
        let desired = host(&hosts, name);
        let conf = text(file(
            desired,
            "/etc/postgresql/{pg_version}/main/conf.d/60-provision.conf",
        ));
        assert!(conf.contains("listen_addresses = 'localhost'\n"), "{conf}");
        let hba_file = file(desired, "/etc/postgresql/{pg_version}/main/pg_hba.conf");
        assert_eq!(
            hba_file.on_change,
            [Handler::Reload("postgresql".to_owned())]
        );
        let rules = hba_rules(text(hba_file));
        assert_eq!(
            rules,
            [
                "local all postgres peer".to_owned(),
                format!("host \"{database}\" \"{user}\" 127.0.0.1/32 scram-sha-256"),
            ]
        );
        let postgres = desired.postgres.as_ref().expect("postgres state");
        assert_eq!(postgres.databases.len(), 1);
        assert_eq!(postgres.databases[0].name, database);
        assert_eq!(postgres.databases[0].owner, user);
        assert_eq!(postgres.roles[0].name, user);
    }
}

/// The non-comment lines of a pg_hba.conf, whitespace normalised.
fn hba_rules(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn a_remote_database_is_reachable_only_from_the_host_that_needs_it() {
    let env = example_env();
    // inventory-vm loses its PostgreSQL: its database moves to the only postgres host left.
    let text_toml = std::fs::read_to_string(workspace().join("inventory.toml"))
        .expect("read")
        .replace(
            r#"roles = ["inventory", "postgres"]"#,
            r#"roles = ["inventory"]"#,
        );
    let hosts = render(&inventory_from(&text_toml, &env), &env);
    let billing = host(&hosts, "billing-vm");
    let conf = text(file(
        billing,
        "/etc/postgresql/{pg_version}/main/conf.d/60-provision.conf",
    ));
    assert!(
        conf.contains("listen_addresses = 'localhost,192.168.56.12'\n"),
        "{conf}"
    );
    assert_eq!(
        hba_rules(text(file(
            billing,
            "/etc/postgresql/{pg_version}/main/pg_hba.conf"
        ))),
        [
            "local all postgres peer",
            // From another host over TLS alone.
            "hostssl \"movies_db\" \"inventory_user\" 192.168.56.11/32 scram-sha-256",
            "host \"billing_db\" \"billing_user\" 127.0.0.1/32 scram-sha-256",
        ]
    );
    let conf = text(file(
        billing,
        "/etc/postgresql/{pg_version}/main/conf.d/60-provision.conf",
    ));
    assert_has_lines(
        conf,
        &[
            "ssl = on",
            "ssl_cert_file = '/etc/platform-tls/postgres/host.crt'",
            "ssl_key_file = '/etc/platform-tls/postgres/host.key'",
        ],
    );
    let key = file(billing, "/etc/platform-tls/postgres/host.key");
    assert_eq!((key.owner.as_str(), key.mode), ("postgres", 0o600));
    assert_eq!(key.on_change, [Handler::Reload("postgresql".to_owned())]);
    let postgres = billing.postgres.as_ref().expect("postgres state");
    let databases: Vec<&str> = postgres.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(databases, ["movies_db", "billing_db"]);
    let inventory = host(&hosts, "inventory-vm");
    assert!(inventory.postgres.is_none());
    assert_eq!(inventory.packages, ["curl", "nftables"]);
    let env_text = text(file(inventory, "/etc/inventory/inventory.env"));
    // Verified against the platform CA, for the address it connects to.
    assert!(
        env_text.contains(
            "@192.168.56.12:5432/movies_db?sslmode=verify-full&sslrootcert=%2Fetc%2Fplatform-tls%2Finventory%2Fca.crt\n"
        ),
        "{env_text}"
    );
    let unit = text(file(inventory, "/etc/systemd/system/inventory.service"));
    assert!(!unit.contains("postgresql.service"), "{unit}");
}

#[test]
fn the_broker_listens_beyond_loopback_for_the_remote_gateway_over_tls_alone() {
    let hosts = default_hosts();
    let billing = host(&hosts, "billing-vm");
    let conf = text(file(billing, "/etc/rabbitmq/rabbitmq.conf"));
    assert_has_lines(
        conf,
        &[
            "listeners.tcp.1 = 127.0.0.1:5672",
            "listeners.ssl.1 = 192.168.56.12:5671",
            "ssl_options.cacertfile = /etc/platform-tls/rabbitmq/ca.crt",
            "ssl_options.certfile = /etc/platform-tls/rabbitmq/host.crt",
            "ssl_options.keyfile = /etc/platform-tls/rabbitmq/host.key",
        ],
    );
    assert!(!conf.contains("listeners.tcp.2"), "{conf}");
    let key = file(billing, "/etc/platform-tls/rabbitmq/host.key");
    assert_eq!((key.owner.as_str(), key.mode), ("rabbitmq", 0o600));
    assert_eq!(
        key.on_change,
        [Handler::Restart("rabbitmq-server".to_owned())]
    );
    // The certificate names the address the gateway connects to, and the host.
    let cert = text(file(billing, "/etc/platform-tls/rabbitmq/host.crt"));
    let facts = provisioner::pki::parse(cert).expect("a certificate");
    assert_eq!(facts.names, ["192.168.56.12", "billing-vm"]);
    let ca = text(file(billing, "/etc/platform-tls/rabbitmq/ca.crt"));
    assert!(facts.signed_by(ca));
    let plugins = file(billing, "/etc/rabbitmq/enabled_plugins");
    assert_eq!(text(plugins), "[rabbitmq_management].\n");
    assert_eq!(
        plugins.on_change,
        [Handler::Restart("rabbitmq-server".to_owned())]
    );
    let state = billing.rabbitmq.as_ref().expect("rabbitmq state");
    assert_eq!(state.vhost, "billing_vhost");
    assert_eq!(state.user, "rabbitmq_user");
    assert_eq!(state.password.expose(), "rabbitmq_password");
    assert_eq!(state.permissions, (".*".into(), ".*".into(), ".*".into()));
    assert!(state.remove_guest);
}

/// The rules of a rendered `rules.nft`: its non-comment lines inside the chain, whitespace
/// normalised.
fn firewall_rules(host: &DesiredHost) -> Vec<String> {
    let rules = text(file(host, "/etc/platform-firewall/rules.nft"));
    rules
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("tcp dport") || line.starts_with("iif"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_firewall_opens_each_platform_port_only_to_the_hosts_using_it() {
    let hosts = default_hosts();
    // gateway-vm 192.168.56.10 calls inventory-vm .11 and publishes to billing-vm .12; each
    // database serves its own host only.
    assert_eq!(
        firewall_rules(host(&hosts, "inventory-vm")),
        [
            "iif \"lo\" accept",
            "tcp dport 8080 ip saddr { 192.168.56.10 } accept",
            "tcp dport 8080 reject with tcp reset",
            "tcp dport 5432 reject with tcp reset",
        ]
    );
    assert_eq!(
        firewall_rules(host(&hosts, "billing-vm")),
        [
            "iif \"lo\" accept",
            "tcp dport 5432 reject with tcp reset",
            "tcp dport 5671 ip saddr { 192.168.56.10 } accept",
            "tcp dport 5671 reject with tcp reset",
            "tcp dport 4369 reject with tcp reset",
            "tcp dport 25672 reject with tcp reset",
        ]
    );
    let gateway = host(&hosts, "gateway-vm");
    assert!(
        gateway
            .files
            .iter()
            .all(|file| !file.path.contains("firewall")),
        "the gateway's only port is the platform's entry point: no firewall"
    );

    let billing = host(&hosts, "billing-vm");
    assert_eq!(billing.host_units, ["platform-firewall"]);
    let rules = file(billing, "/etc/platform-firewall/rules.nft");
    assert_eq!(
        rules.on_change,
        [Handler::Reload("platform-firewall".to_owned())]
    );
    let rules = text(rules);
    assert!(
        rules.contains(
            "table inet streaming_platform {}\ndelete table inet streaming_platform\ntable inet streaming_platform {\n"
        ),
        "replaced atomically: {rules}"
    );
    assert!(
        rules.contains("policy accept;"),
        "never a default drop: {rules}"
    );
    assert!(
        !rules.contains("15672"),
        "the management UI stays open: {rules}"
    );
    let unit = file(billing, "/etc/systemd/system/platform-firewall.service");
    assert_eq!(
        unit.on_change,
        [
            Handler::DaemonReload,
            Handler::Restart("platform-firewall".to_owned())
        ]
    );
    assert!(
        text(unit).contains("ExecStart=/usr/sbin/nft -f /etc/platform-firewall/rules.nft\n"),
        "{}",
        text(unit)
    );
}

#[test]
fn the_firewall_follows_the_inventory_when_a_database_moves_and_hosts_change() {
    let env = example_env();
    // inventory-vm loses its PostgreSQL (its database moves to billing-vm), and a second
    // gateway on IPv6 joins: both show up where they need to, and only there.
    let text_toml = std::fs::read_to_string(workspace().join("inventory.toml"))
        .expect("read")
        .replace(
            r#"roles = ["inventory", "postgres"]"#,
            r#"roles = ["inventory"]"#,
        )
        + r#"
[[hosts]]
name = "gateway-2"
address = "fd00::20"
port = 22
user = "vagrant"
private_key = "key"
sudo = true
roles = ["gateway"]
"#;
    let hosts = render(&inventory_from(&text_toml, &env), &env);
    assert_eq!(
        firewall_rules(host(&hosts, "inventory-vm")),
        [
            "iif \"lo\" accept",
            "tcp dport 8080 ip saddr { 192.168.56.10 } accept",
            "tcp dport 8080 ip6 saddr { fd00::20 } accept",
            "tcp dport 8080 reject with tcp reset",
        ]
    );
    let billing = firewall_rules(host(&hosts, "billing-vm"));
    assert_eq!(
        billing[1..4],
        [
            "tcp dport 5432 ip saddr { 192.168.56.11 } accept",
            "tcp dport 5432 reject with tcp reset",
            "tcp dport 5671 ip saddr { 192.168.56.10 } accept",
        ]
    );
    assert_eq!(billing[4], "tcp dport 5671 ip6 saddr { fd00::20 } accept");
    assert!(host(&hosts, "gateway-2").host_units.is_empty());
}

/// The rendered rules are valid nftables syntax, checked by `nft -c` in a user and network
/// namespace of its own, so nothing on this machine changes.
#[test]
fn rendered_firewall_rules_pass_nft_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    for desired in default_hosts() {
        let Some(rules) = desired
            .files
            .iter()
            .find(|file| file.path == "/etc/platform-firewall/rules.nft")
        else {
            continue;
        };
        let path = dir.path().join(format!("{}.nft", desired.name));
        std::fs::write(&path, text(rules)).expect("write rules");
        let output = Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "nft", "-c", "-f"])
            .arg(&path)
            .output()
            .expect("unshare and nft are installed (apt-get install util-linux nftables)");
        assert!(
            output.status.success(),
            "{}: {}{}",
            desired.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn rabbitmq_keeps_erlang_ports_on_loopback() {
    let hosts = default_hosts();
    let billing = host(&hosts, "billing-vm");
    let env = file(billing, "/etc/rabbitmq/rabbitmq-env.conf");
    assert_eq!(
        env.on_change,
        [Handler::Restart("rabbitmq-server".to_owned())]
    );
    for variable in ["SERVER_ADDITIONAL_ERL_ARGS", "CTL_ERL_ARGS"] {
        assert!(
            text(env).contains(&format!(
                "{variable}=\"-kernel inet_dist_listen_options [{{bind_to_device,<<\\\"lo\\\">>}}]\"\n"
            )),
            "{}",
            text(env)
        );
    }
    let socket = file(
        billing,
        "/etc/systemd/system/epmd.socket.d/provision-loopback.conf",
    );
    assert_eq!(
        socket.on_change,
        [
            Handler::DaemonReload,
            Handler::Restart("epmd.socket".to_owned())
        ]
    );
    assert!(
        text(socket).contains("[Socket]\nListenStream=\nListenStream=4369\nBindToDevice=lo\n"),
        "{}",
        text(socket)
    );
}

#[test]
fn binaries_go_to_usr_local_bin_of_the_hosts_running_them() {
    // Any ELF of this machine's architecture stands in for the real services here.
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("own path");
    let services = services();
    for service in &services {
        std::fs::copy(&exe, dir.path().join(service)).expect("copy");
    }
    let arch = Arch::from_name(std::env::consts::ARCH).expect("known arch");
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let set = BinarySet::from_dir(dir.path(), &names, arch).expect("valid binaries");
    let env = example_env();
    let hosts = desired_hosts(
        &default_inventory(&env),
        &env,
        &workspace().join("templates"),
        Some(&set),
        &test_pki(&default_inventory(&env)),
    )
    .expect("renders");
    let billing = host(&hosts, "billing-vm");
    assert_eq!(billing.binaries.len(), 1);
    assert_eq!(billing.binaries[0].service, "billing");
    assert_eq!(billing.binaries[0].remote_path, "/usr/local/bin/billing");
    assert_eq!(billing.binaries[0].local_path, dir.path().join("billing"));
    let sha = &set.get("billing").expect("billing").sha256;
    assert_eq!(sha, &binaries::sha256_file(&exe).expect("hash"));
}

#[test]
fn render_to_dir_writes_every_file_with_secrets_private() {
    let out = tempfile::tempdir().expect("temp dir");
    let hosts = default_hosts();
    let written = render_to_dir(&hosts, out.path()).expect("writes");
    let count: usize = hosts.iter().map(|host| host.files.len()).sum();
    assert_eq!(written.len(), count);
    let env_path = out.path().join("billing-vm/etc/billing/billing.env");
    let mode = std::fs::metadata(&env_path)
        .expect("env file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let unit_path = out
        .path()
        .join("gateway-vm/etc/systemd/system/gateway.service");
    let mode = std::fs::metadata(&unit_path)
        .expect("unit")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert!(out
        .path()
        .join("inventory-vm/etc/postgresql/{pg_version}/main/pg_hba.conf")
        .is_file());
    // A second render over the first leaves the same bytes.
    render_to_dir(&hosts, out.path()).expect("writes again");
    let billing = host(&hosts, "billing-vm");
    let env_file = file(billing, "/etc/billing/billing.env");
    assert_eq!(
        std::fs::read(&env_path).expect("read"),
        env_file.content.bytes()
    );
}

#[test]
fn a_missing_template_folder_is_named() {
    let env = example_env();
    let error = desired_hosts(
        &default_inventory(&env),
        &env,
        Path::new("/nonexistent/templates"),
        None,
        &test_pki(&default_inventory(&env)),
    )
    .expect_err("no templates");
    assert!(matches!(error, RenderError::Templates { .. }));
    assert!(
        error.to_string().contains("/nonexistent/templates"),
        "{error}"
    );
}

#[test]
fn a_template_using_an_unknown_variable_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&workspace().join("templates"), dir.path());
    let unit = dir.path().join("systemd/service.service");
    let body = std::fs::read_to_string(&unit).expect("read");
    std::fs::write(&unit, body.replace("{{ user }}", "{{ usr }}")).expect("write");
    let env = example_env();
    let message = desired_hosts(
        &default_inventory(&env),
        &env,
        dir.path(),
        None,
        &test_pki(&default_inventory(&env)),
    )
    .expect_err("unknown variable")
    .to_string();
    assert!(message.contains("systemd/service.service"), "{message}");
    assert!(message.contains("usr"), "{message}");
    assert!(message.contains("(for gateway-vm)"), "{message}");
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze verify

/// Runs `systemd-analyze verify` on `units` (name, text) and returns its complaints, if any.
///
/// Without systemd as PID 1 verify still loads the files and reports unknown directives and bad
/// values, but only as warnings with exit status 0: any output counts as a failure here. It also
/// insists that `ExecStart=` exists and is executable, so `/usr/local/bin/<svc>` is pointed at a
/// stub executable in the temp folder (that line is the only one changed).
fn verify_units(units: &[(String, String)]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let stub = dir.path().join("stub");
    std::fs::write(&stub, "#!/bin/sh\nexit 0\n").expect("stub");
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut paths = Vec::new();
    for (name, body) in units {
        let service = name.trim_end_matches(".service");
        let exec = format!("ExecStart=/usr/local/bin/{service}");
        let platform = services().iter().any(|known| known == service);
        assert!(!platform || body.contains(&exec), "{name} has no {exec}");
        let body = body.replace(&exec, &format!("ExecStart={}", stub.display()));
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write unit");
        paths.push(path);
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .args(&paths)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze is installed (apt-get install systemd)");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && complaints.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {complaints}", output.status))
    }
}

fn rendered_units() -> Vec<(String, String)> {
    default_hosts()
        .iter()
        .flat_map(|host| host.files.iter())
        .filter(|file| {
            file.path.starts_with("/etc/systemd/system/")
                && (file.path.ends_with(".service") || file.path.ends_with(".socket"))
        })
        .map(|file| {
            let name = file.path.rsplit('/').next().expect("file name").to_owned();
            (name, text(file).to_owned())
        })
        .collect()
}

#[test]
fn every_rendered_unit_passes_systemd_analyze_verify() {
    let units = rendered_units();
    let names: Vec<&str> = units.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gateway.service",
            "gateway.socket",
            "inventory.service",
            "inventory.socket",
            "platform-firewall.service",
            "billing.service",
            "platform-firewall.service"
        ]
    );
    verify_units(&units).expect("systemd-analyze verify accepts every unit");
}

#[test]
fn verify_catches_a_misspelled_directive() {
    // Proves the check above can fail: a typo in a template must not slip through.
    let mut units = rendered_units();
    units[0].1 = units[0].1.replace("RestartSec=2", "RestartSecs=2");
    let complaint = verify_units(&units).expect_err("a typo must be reported");
    assert!(complaint.contains("RestartSecs"), "{complaint}");
    let mut units = rendered_units();
    assert_eq!(units[2].0, "inventory.service");
    units[2].1 = units[2]
        .1
        .replace("ProtectSystem=strict", "ProtectSystem=strikt");
    assert!(
        verify_units(&units).is_err(),
        "a bad value must be reported"
    );
}

// ---------------------------------------------------------------------------------------------
// The real release binaries.

/// Builds the services in release mode (slow the first time: minutes on two cores), then
/// checks they run on Ubuntu 22.04's glibc and are x86_64 ELF files. `from_dir` refuses a
/// binary too new for the hosts at every deploy; this shows the workspace's own pass.
/// Run with `cargo test -p provisioner --test it -- --ignored`.
#[test]
#[ignore = "builds the release binaries of the services"]
fn release_binaries_need_at_most_glibc_2_35() {
    let services = services();
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let release = binaries::build(&workspace(), &names, Profile::Release).expect("release build");
    let arch = Arch::from_name(std::env::consts::ARCH).expect("known arch");
    let set = BinarySet::from_dir(&release, &names, arch).expect("checked binaries");
    for binary in set.iter() {
        let needed = binaries::max_glibc(&binary.path).expect("readable ELF");
        assert!(
            needed.is_some(),
            "{} links glibc dynamically",
            binary.service
        );
        binaries::check_glibc(&binary.path, MAX_GLIBC).unwrap_or_else(|error| panic!("{error}"));
    }
}

/// The default inventory with RabbitMQ on every host: a cluster of three.
fn cluster_inventory() -> String {
    std::fs::read_to_string(workspace().join("inventory.toml"))
        .expect("inventory.toml")
        .replace(
            "roles = [\"gateway\"]",
            "roles = [\"gateway\", \"rabbitmq\"]",
        )
        .replace(
            "roles = [\"inventory\", \"postgres\"]",
            "roles = [\"inventory\", \"postgres\", \"rabbitmq\"]",
        )
}

fn cluster_hosts() -> Vec<DesiredHost> {
    let env = example_env();
    render(&inventory_from(&cluster_inventory(), &env), &env)
}

/// Each of `lines` is a whole line of `text`.
#[track_caller]
pub(crate) fn assert_has_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.lines().any(|l| l.trim() == *line), "{line} in {text}");
    }
}

#[test]
fn a_rabbitmq_cluster_shares_a_cookie_names_its_nodes_and_opens_erlang_ports_to_its_nodes_only() {
    let hosts = cluster_hosts();
    let billing = host(&hosts, "billing-vm");
    let cluster = billing
        .rabbitmq
        .as_ref()
        .and_then(|rabbitmq| rabbitmq.cluster.as_ref())
        .expect("a cluster");
    assert_eq!(cluster.node, "rabbit@billing-vm");
    assert_eq!(cluster.seed, "rabbit@gateway-vm", "the first broker host");
    assert_eq!(
        cluster.nodes,
        [
            "rabbit@gateway-vm",
            "rabbit@inventory-vm",
            "rabbit@billing-vm"
        ]
    );

    let cookie = file(billing, "/var/lib/rabbitmq/.erlang.cookie");
    assert!(matches!(cookie.content, FileContent::SecretText(_)));
    assert_eq!((cookie.mode, cookie.owner.as_str()), (0o400, "rabbitmq"));
    assert_eq!(text(cookie), "change_me_to_a_long_random_erlang_cookie");
    assert_eq!(
        cookie.on_change,
        [Handler::Restart("rabbitmq-server".to_owned())]
    );

    let env = text(file(billing, "/etc/rabbitmq/rabbitmq-env.conf"));
    assert!(env.contains("NODENAME=rabbit@billing-vm\n"), "{env}");
    // The nodes and rabbitmqctl speak Erlang's distribution over TLS, with the host's
    // certificate, verifying the peer's against the platform CA.
    for variable in ["SERVER_ADDITIONAL_ERL_ARGS", "CTL_ERL_ARGS"] {
        assert!(
            env.contains(&format!(
                "{variable}=\"-kernel inetrc \\\"/etc/rabbitmq/erl_inetrc\\\" -proto_dist inet_tls -ssl_dist_optfile /etc/rabbitmq/inter_node_tls.config\"\n"
            )),
            "{env}"
        );
    }
    assert!(!env.contains("bind_to_device"), "{env}");
    let dist_tls = file(billing, "/etc/rabbitmq/inter_node_tls.config");
    assert_eq!(
        dist_tls.on_change,
        [Handler::Restart("rabbitmq-server".to_owned())]
    );
    assert_has_lines(
        text(dist_tls),
        &[
            "{cacertfile, \"/etc/platform-tls/rabbitmq/ca.crt\"},",
            "{certfile, \"/etc/platform-tls/rabbitmq/host.crt\"},",
            "{keyfile, \"/etc/platform-tls/rabbitmq/host.key\"},",
            "{verify, verify_peer},",
            "{fail_if_no_peer_cert, true}",
        ],
    );
    let key = file(billing, "/etc/platform-tls/rabbitmq/host.key");
    assert_eq!((key.mode, key.owner.as_str()), (0o600, "rabbitmq"));
    assert_has_lines(
        text(file(billing, "/etc/rabbitmq/erl_inetrc")),
        &[
            "{host, {192,168,56,10}, [\"gateway-vm\"]}.",
            "{host, {192,168,56,11}, [\"inventory-vm\"]}.",
            "{host, {192,168,56,12}, [\"billing-vm\"]}.",
            "{lookup, [file, native]}.",
        ],
    );
    assert_has_lines(
        text(file(billing, "/etc/rabbitmq/rabbitmq.conf")),
        &[
            "cluster_formation.peer_discovery_backend = classic_config",
            "cluster_formation.classic_config.nodes.1 = rabbit@gateway-vm",
            "cluster_formation.classic_config.nodes.3 = rabbit@billing-vm",
            "cluster_partition_handling = pause_minority",
        ],
    );
    let socket = text(file(
        billing,
        "/etc/systemd/system/epmd.socket.d/provision-loopback.conf",
    ));
    assert!(
        socket.contains("ListenStream=\nListenStream=4369\n"),
        "{socket}"
    );
    assert!(!socket.contains("BindToDevice"), "{socket}");

    // epmd and the distribution port: the other nodes, nobody else.
    let rules = firewall_rules(billing);
    for port in [4369, 25672] {
        assert!(
            rules.contains(&format!(
                "tcp dport {port} ip saddr {{ 192.168.56.10, 192.168.56.11 }} accept"
            )),
            "{rules:?}"
        );
    }
    // Every service reaches every node, its own first, as a list the services fail over along.
    let gateway = host(&hosts, "gateway-vm");
    let env = text(file(gateway, "/etc/gateway/gateway.env"));
    let amqp = env
        .lines()
        .find_map(|line| line.strip_prefix("AMQP_URL="))
        .expect("AMQP_URL");
    let nodes: Vec<&str> = amqp
        .split(',')
        .map(|url| url.rsplit_once('@').expect("credentials").1)
        .collect();
    assert_eq!(
        nodes,
        [
            "127.0.0.1:5672/billing_vhost",
            "192.168.56.11:5671/billing_vhost",
            "192.168.56.12:5671/billing_vhost"
        ]
    );
    let unit = text(file(gateway, "/etc/systemd/system/gateway.service"));
    assert!(unit.contains("rabbitmq-server.service"), "{unit}");
}

#[test]
fn a_cluster_needs_its_cookie_in_the_env_file() {
    let text = cluster_inventory();
    let example = std::fs::read_to_string(workspace().join(".env.example")).expect("example");
    for (replacement, problem) in [
        ("", "is missing"),
        ("RABBITMQ_CLUSTER_PASSWORD=short\n", "20 to 255"),
        (
            "RABBITMQ_CLUSTER_PASSWORD=\"a cookie with spaces in it!\"\n",
            "only letters",
        ),
    ] {
        let env_text: String = example
            .lines()
            .filter(|line| !line.starts_with("RABBITMQ_CLUSTER_PASSWORD="))
            .map(|line| format!("{line}\n"))
            .collect::<String>()
            + replacement;
        let env = EnvFile::parse(
            Path::new(".env"),
            &env_text,
            &platform().required_variables(),
        )
        .expect("parses");
        let inventory = inventory_from(&text, &env);
        let error = try_render(&inventory, &env).expect_err("refused");
        let message = error.to_string();
        assert!(
            matches!(error, RenderError::ClusterCookie { .. }),
            "{message}"
        );
        assert!(
            message.contains("RABBITMQ_CLUSTER_PASSWORD") && message.contains(problem),
            "{message}"
        );
        assert!(
            !message.contains("cookie with spaces"),
            "never echoed: {message}"
        );
    }
}

/// The committed high-availability inventory: a cluster of three brokers, two of each service,
/// the second inventory and billing on the databases of the first.
#[test]
fn the_high_availability_inventory_renders() {
    let env = example_env();
    let inventory = Inventory::load(&workspace().join("inventory-ha.toml"), &env, &platform())
        .expect("inventory-ha.toml is valid");
    let hosts = render(&inventory, &env);
    let nodes: Vec<&str> = hosts
        .iter()
        .filter_map(|host| host.rabbitmq.as_ref()?.cluster.as_ref())
        .map(|cluster| cluster.node.as_str())
        .collect();
    assert_eq!(
        nodes,
        ["rabbit@billing-vm", "rabbit@node6-vm", "rabbit@node7-vm"]
    );
    for (name, service) in [
        ("node4-vm", "gateway"),
        ("node5-vm", "inventory"),
        ("node6-vm", "billing"),
    ] {
        let host = host(&hosts, name);
        assert!(
            host.services.iter().any(|spec| spec.unit == service),
            "{name} runs {service}"
        );
    }
    let env_text = text(file(
        host(&hosts, "node5-vm"),
        "/etc/inventory/inventory.env",
    ));
    assert!(
        env_text.contains("@192.168.56.11:5432/movies_db"),
        "{env_text}"
    );
    let env_text = text(file(host(&hosts, "node6-vm"), "/etc/billing/billing.env"));
    assert!(
        env_text.contains("@192.168.56.12:5432/billing_db"),
        "{env_text}"
    );
    // Each gateway starts at another node; a billing at its own.
    for (name, env, first) in [
        ("gateway-vm", "/etc/gateway/gateway.env", "192.168.56.12"),
        ("node4-vm", "/etc/gateway/gateway.env", "192.168.56.15"),
        ("node6-vm", "/etc/billing/billing.env", "127.0.0.1"),
    ] {
        let env_text = text(file(host(&hosts, name), env));
        let amqp = env_text
            .lines()
            .find_map(|line| line.strip_prefix("AMQP_URL="))
            .expect("AMQP_URL");
        assert_eq!(amqp.split(',').count(), 3, "{name}");
        assert!(
            amqp.split(',')
                .next()
                .expect("a node")
                .contains(&if first == "127.0.0.1" {
                    format!("@{first}:5672/")
                } else {
                    format!("@{first}:5671/")
                }),
            "{name} starts at {first}"
        );
    }
}

/// `vip` in the inventory: keepalived on the gateway hosts, the first preferred, each checking
/// its gateway's readiness and speaking VRRP to the others' addresses.
#[test]
fn the_vip_is_held_by_keepalived_on_the_gateway_hosts() {
    let env = example_env();
    let inventory = Inventory::load(&workspace().join("inventory-ha.toml"), &env, &platform())
        .expect("inventory-ha.toml is valid");
    let vip = inventory.settings.vip.clone().expect("a vip");
    assert_eq!(vip.address.to_string(), "192.168.56.20");
    let hosts = render(&inventory, &env);
    for (name, priority, own, peer) in [
        ("gateway-vm", 150, "192.168.56.10", "192.168.56.13"),
        ("node4-vm", 149, "192.168.56.13", "192.168.56.10"),
    ] {
        let host = host(&hosts, name);
        assert!(host.packages.contains(&"keepalived".to_owned()));
        assert!(host.host_units.contains(&"keepalived".to_owned()));
        let conf = file(host, "/etc/keepalived/keepalived.conf");
        assert_eq!(conf.on_change, [Handler::Restart("keepalived".to_owned())]);
        assert_has_lines(
            text(conf),
            &[
                "script \"/usr/bin/curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:8080/ready\"",
                "state BACKUP",
                "nopreempt",
                "interface eth1",
                "virtual_router_id 20",
                &format!("priority {priority}"),
                &format!("unicast_src_ip {own}"),
                peer,
                "192.168.56.20/32 dev eth1",
            ],
        );
    }
    for name in ["inventory-vm", "billing-vm", "node7-vm"] {
        let host = host(&hosts, name);
        assert!(!host.packages.contains(&"keepalived".to_owned()), "{name}");
    }
    // Without `vip`, as in the default inventory: no keepalived anywhere.
    assert!(default_hosts()
        .iter()
        .all(|host| !host.packages.contains(&"keepalived".to_owned())));
}

#[test]
fn a_vip_needs_an_interface_and_holders_with_ipv4_addresses() {
    let env = example_env();
    let text = std::fs::read_to_string(workspace().join("inventory-ha.toml")).expect("read");
    for (variant, field, words) in [
        (
            text.replace("vip = \"${GATEWAY_VIP}\"", "vip = \"gateway.example\""),
            "settings.vip",
            "not an IPv4 address",
        ),
        (
            text.replace("vip_interface = \"eth1\"\n", ""),
            "settings.vip_interface",
            "missing",
        ),
        (
            text.replace("vip_interface = \"eth1\"", "vip_interface = \"eth1; rm\""),
            "settings.vip_interface",
            "not a network interface name",
        ),
        (
            text.replace(
                "address = \"${NODE4_VM_IP}\"",
                "address = \"node4.example\"",
            ),
            "hosts[3].address",
            "must be an IPv4 address",
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("inventory.toml");
        std::fs::write(&path, &variant).expect("write");
        let message = Inventory::load(&path, &env, &platform())
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains(&format!("`{field}`")) && message.contains(words),
            "{message}"
        );
    }
}

/// `rate_limit_per_second` and `rate_limit_burst` reach the gateway's env file, `log_format` every
/// service's; without them the files have none of these lines (no limit, the services' own log
/// format); a bad value names its field.
#[test]
fn rate_limit_and_log_format_come_from_the_settings() {
    let env = example_env();
    let original = std::fs::read_to_string(workspace().join("inventory.toml")).expect("read");
    let limited = original.replace(
        "[settings]\n",
        "[settings]\nrate_limit_per_second = 50\nrate_limit_burst = \"100\"\nlog_format = \"json\"\n",
    );
    let hosts = render(&inventory_from(&limited, &env), &env);
    let gateway_env = text(file(host(&hosts, "gateway-vm"), "/etc/gateway/gateway.env")).to_owned();
    assert_has_lines(
        &gateway_env,
        &[
            "RATE_LIMIT_PER_SECOND=50",
            "RATE_LIMIT_BURST=100",
            "LOG_FORMAT=json",
        ],
    );
    for (name, service) in [("inventory-vm", "inventory"), ("billing-vm", "billing")] {
        let path = format!("/etc/{service}/{service}.env");
        assert_has_lines(text(file(host(&hosts, name), &path)), &["LOG_FORMAT=json"]);
    }
    let hosts = default_hosts();
    let gateway_env = text(file(host(&hosts, "gateway-vm"), "/etc/gateway/gateway.env")).to_owned();
    assert!(!gateway_env.contains("RATE_LIMIT"), "{gateway_env}");
    assert!(gateway_env.ends_with("RUST_LOG=info\n"), "{gateway_env}");

    for (setting, words) in [
        ("log_format = \"xml\"", "not a log format"),
        ("rate_limit_per_second = 0", "not a number of requests"),
        ("rate_limit_per_second = \"many\"", "not a number"),
        ("rate_limit_burst = 10", "without `rate_limit_per_second`"),
    ] {
        let variant = original.replace("[settings]\n", &format!("[settings]\n{setting}\n"));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("inventory.toml");
        std::fs::write(&path, &variant).expect("write");
        let message = Inventory::load(&path, &env, &platform())
            .expect_err("refused")
            .to_string();
        let field = setting.split(' ').next().expect("a key");
        assert!(
            message.contains(&format!("`settings.{field}`")) && message.contains(words),
            "{message}"
        );
    }
}

/// `GATEWAY_JWT_SECRET` of `.env` turns the gateway's bearer tokens on: it reaches the gateway's
/// env file (a secret file), no other; a secret too short or holding quotes is refused, unechoed.
#[test]
fn the_gateways_token_secret_comes_from_env_and_is_checked() {
    let example = std::fs::read_to_string(workspace().join(".env.example")).expect("example");
    let inventory_text =
        std::fs::read_to_string(workspace().join("inventory.toml")).expect("inventory");
    let with = |line: &str| example_env_with(&example, line);
    let secret = "0123456789abcdef0123456789abcdef-platform";
    let env = with(&format!("GATEWAY_JWT_SECRET={secret}"));
    let hosts = render(&inventory_from(&inventory_text, &env), &env);
    let gateway = file(host(&hosts, "gateway-vm"), "/etc/gateway/gateway.env");
    assert!(matches!(gateway.content, FileContent::SecretText(_)));
    assert_has_lines(text(gateway), &[&format!("AUTH_JWT_SECRET={secret}")]);
    for (name, path) in [
        ("inventory-vm", "/etc/inventory/inventory.env"),
        ("billing-vm", "/etc/billing/billing.env"),
    ] {
        assert!(!text(file(host(&hosts, name), path)).contains(secret));
    }
    // Without it, no line: the gateway then needs no token.
    let hosts = default_hosts();
    let gateway = file(host(&hosts, "gateway-vm"), "/etc/gateway/gateway.env");
    assert!(!text(gateway).contains("AUTH_JWT_SECRET"));

    for (line, problem) in [
        ("GATEWAY_JWT_SECRET=too-short-s3cret", "32 to 512"),
        (
            "GATEWAY_JWT_SECRET='0123456789abcdef0123456789abcdef\"quoted'",
            "only printable ASCII",
        ),
    ] {
        let env = with(line);
        let inventory = inventory_from(&inventory_text, &env);
        let error = try_render(&inventory, &env).expect_err("refused");
        let message = error.to_string();
        assert!(matches!(error, RenderError::JwtSecret { .. }), "{message}");
        assert!(
            message.contains("GATEWAY_JWT_SECRET") && message.contains(problem),
            "{message}"
        );
        assert!(
            !message.contains("s3cret") && !message.contains("quoted"),
            "{message}"
        );
    }
}

/// The daemons installed from Debian's packages get systemd's sandbox as a drop-in: restarted for
/// it, except Patroni, whose restart would stop the primary (it takes it at its next start).
#[test]
fn packaged_daemons_get_a_sandbox_drop_in() {
    let hosts = default_hosts();
    let billing = host(&hosts, "billing-vm");
    let dropin = file(
        billing,
        "/etc/systemd/system/rabbitmq-server.service.d/provision-hardening.conf",
    );
    assert_eq!(
        dropin.on_change,
        [
            Handler::DaemonReload,
            Handler::Restart("rabbitmq-server".into())
        ]
    );
    assert_has_lines(
        text(dropin),
        &[
            "[Service]",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
            "SystemCallFilter=@system-service",
        ],
    );
    assert!(
        !text(dropin)
            .lines()
            .any(|line| line.starts_with("MemoryDenyWriteExecute=")),
        "Erlang's JIT needs writable code"
    );
    let env = example_env();
    let inventory = Inventory::load(&workspace().join("inventory-pg-ha.toml"), &env, &platform())
        .expect("valid");
    let hosts = render(&inventory, &env);
    let member = host(&hosts, "node4-vm");
    for unit in [
        "etcd",
        "patroni",
        "prometheus-node-exporter",
        "prometheus-postgres-exporter",
    ] {
        let dropin = file(
            member,
            &format!("/etc/systemd/system/{unit}.service.d/provision-hardening.conf"),
        );
        let restarts = dropin
            .on_change
            .contains(&Handler::Restart(unit.to_owned()));
        assert_eq!(restarts, unit != "patroni", "{unit}");
    }
    let haproxy = file(
        host(&hosts, "billing-vm"),
        "/etc/systemd/system/haproxy.service.d/provision-hardening.conf",
    );
    assert_has_lines(text(haproxy), &["SystemCallFilter=chroot"]);
    // Debian's own clusters: pg_ctlcluster changes user itself, so those two capabilities stay.
    let postgres = file(
        billing,
        "/etc/systemd/system/postgresql@.service.d/provision-hardening.conf",
    );
    assert_eq!(
        postgres.on_change,
        [Handler::DaemonReload, Handler::Restart("postgresql".into())]
    );
    assert_has_lines(
        text(postgres),
        &["CapabilityBoundingSet=CAP_SETUID CAP_SETGID"],
    );
    // Prometheus gets none: Debian hardens it.
    assert!(host(&hosts, "gateway-vm")
        .files
        .iter()
        .all(|file| !file.path.contains("prometheus.service.d")));
    // keepalived, where the inventory has a VIP: the network capabilities it needs and no more.
    let inventory =
        Inventory::load(&workspace().join("inventory-ha.toml"), &env, &platform()).expect("valid");
    let hosts = render(&inventory, &env);
    let keepalived = file(
        host(&hosts, "gateway-vm"),
        "/etc/systemd/system/keepalived.service.d/provision-hardening.conf",
    );
    assert_eq!(
        keepalived.on_change,
        [Handler::DaemonReload, Handler::Restart("keepalived".into())]
    );
    assert_has_lines(
        text(keepalived),
        &[
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BROADCAST CAP_SETUID CAP_SETGID CAP_KILL",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_PACKET",
        ],
    );
}

/// `.env.example`'s text with `lines` added, parsed.
fn example_env_with(example: &str, lines: &str) -> EnvFile {
    EnvFile::parse(
        Path::new(".env"),
        &format!("{example}\n{lines}\n"),
        &platform().required_variables(),
    )
    .expect("parses")
}

/// `GATEWAY_JWT_PUBLIC_KEY_FILE`: the gateway checks RS256 tokens with that public key, which
/// goes to its host beside its env file; a private key, or the secret beside it, is refused.
#[test]
fn the_gateways_token_public_key_goes_to_its_host_and_is_checked() {
    let example = std::fs::read_to_string(workspace().join(".env.example")).expect("example");
    let inventory_text =
        std::fs::read_to_string(workspace().join("inventory.toml")).expect("inventory");
    let dir = tempfile::tempdir().expect("temp dir");
    let public = dir.path().join("issuer.pub");
    let pem = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n";
    std::fs::write(&public, pem).expect("write");
    let private = dir.path().join("issuer.key");
    std::fs::write(
        &private,
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let with = |lines: &str| example_env_with(&example, lines);
    let env = with(&format!("GATEWAY_JWT_PUBLIC_KEY_FILE={}", public.display()));
    let hosts = render(&inventory_from(&inventory_text, &env), &env);
    let gateway = host(&hosts, "gateway-vm");
    let key = file(gateway, "/etc/gateway/jwt-public.pem");
    assert_eq!(text(key), pem);
    assert_eq!((key.mode, key.owner.as_str()), (0o644, "root"));
    assert_eq!(key.on_change, [Handler::Restart("gateway".to_owned())]);
    assert_has_lines(
        text(file(gateway, "/etc/gateway/gateway.env")),
        &["AUTH_JWT_PUBLIC_KEY_FILE=/etc/gateway/jwt-public.pem"],
    );
    assert!(host(&hosts, "inventory-vm")
        .files
        .iter()
        .all(|file| !file.path.ends_with("jwt-public.pem")));

    for (lines, problem) in [
        (
            format!("GATEWAY_JWT_PUBLIC_KEY_FILE={}", private.display()),
            "is not a PEM public key".to_owned(),
        ),
        (
            format!("GATEWAY_JWT_PUBLIC_KEY_FILE={}/absent.pub", dir.path().display()),
            "absent.pub".to_owned(),
        ),
        (
            format!(
                "GATEWAY_JWT_PUBLIC_KEY_FILE={}\nGATEWAY_JWT_SECRET=0123456789abcdef0123456789abcdef-x",
                public.display()
            ),
            "are both set".to_owned(),
        ),
    ] {
        let env = with(&lines);
        let error = try_render(&inventory_from(&inventory_text, &env), &env)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("GATEWAY_JWT_PUBLIC_KEY_FILE") && error.contains(&problem),
            "{error}"
        );
        assert!(!error.contains("0123456789abcdef"), "{error}");
    }
}
