//! The databases in a Patroni cluster (`inventory-pg-ha.toml`): what the inventory accepts, what
//! each host gets, and how plan treats a member (its roles converged on the primary alone).

use provisioner::converge::facts::PatroniFact;
use provisioner::converge::plan::{plan, Action, ChangeKind, Phase};
use provisioner::converge::status::parse_cluster;
use provisioner::desired::{
    DesiredHost, FileContent, Handler, PatroniMember, PostgresState, PG_VERSION_PLACEHOLDER,
};
use provisioner::render::inventory::Inventory;
use provisioner::render::RenderError;

use crate::fixtures::*;
use crate::render::{
    assert_has_lines, example_env, file, host, platform, text, try_render, workspace,
};

fn committed() -> String {
    std::fs::read_to_string(workspace().join("inventory-pg-ha.toml")).expect("read")
}

fn load(text: &str) -> Result<Inventory, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("inventory.toml");
    std::fs::write(&path, text).expect("write");
    Inventory::load(&path, &example_env(), &platform()).map_err(|error| error.to_string())
}

fn cluster_hosts() -> Vec<DesiredHost> {
    let env = example_env();
    let inventory = load(&committed()).expect("inventory-pg-ha.toml is valid");
    try_render(&inventory, &env).expect("renders")
}

#[test]
fn the_members_hold_every_database_and_patroni_configures_them() {
    let hosts = cluster_hosts();
    for (name, first, address) in [
        ("node4-vm", true, "192.168.56.13"),
        ("node5-vm", false, "192.168.56.14"),
        ("node6-vm", false, "192.168.56.15"),
    ] {
        let member = host(&hosts, name);
        for package in [
            "postgresql",
            "patroni",
            "curl",
            "etcd-server",
            "etcd-client",
        ] {
            assert!(
                member.packages.contains(&package.to_owned()),
                "{name}: {package}"
            );
        }
        for unit in ["etcd", "patroni", "platform-firewall"] {
            assert!(
                member.host_units.contains(&unit.to_owned()),
                "{name}: {unit}"
            );
        }
        let postgres = member
            .postgres
            .as_ref()
            .expect("a member holds the databases");
        assert_eq!(postgres.cluster, Some(PatroniMember { first }));
        let roles: Vec<&str> = postgres.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(roles, ["inventory_user", "billing_user"]);
        let databases: Vec<(&str, &str)> = postgres
            .databases
            .iter()
            .map(|d| (d.name.as_str(), d.owner.as_str()))
            .collect();
        assert_eq!(
            databases,
            [
                ("movies_db", "inventory_user"),
                ("billing_db", "billing_user")
            ]
        );

        // Passwords inside: secret, the postgres user's alone, reloaded (never a restart).
        let config = file(member, "/etc/patroni/config.yml");
        assert!(matches!(config.content, FileContent::SecretText(_)));
        assert_eq!((config.mode, config.owner.as_str()), (0o600, "postgres"));
        assert_eq!(config.on_change, [Handler::Reload("patroni".into())]);
        let yaml = text(config);
        assert_has_lines(
            yaml,
            &[
                &format!("name: {name}"),
                "listen: 0.0.0.0:8008",
                &format!("listen: 127.0.0.1,{address}:5432"),
                &format!("connect_address: {address}:5432"),
                "- 192.168.56.13:2379",
                "- 192.168.56.15:2379",
                "synchronous_mode: true",
                "synchronous_mode_strict: false",
                "use_pg_rewind: true",
                "data_dir: /var/lib/postgresql/{pg_version}/patroni",
                "bin_dir: /usr/lib/postgresql/{pg_version}/bin",
                "password: \"change_me_superuser_password\"",
                "- local all postgres peer",
                "- local replication replicator scram-sha-256",
                "use_unix_socket_repl: true",
                "- hostssl replication replicator 192.168.56.14/32 scram-sha-256",
                "- hostssl all postgres 192.168.56.15/32 scram-sha-256",
                // Replication over TLS, the primary verified by the platform CA and its name.
                "ssl: \"on\"",
                "ssl_cert_file: /etc/platform-tls/postgres/host.crt",
                "ssl_key_file: /etc/platform-tls/postgres/host.key",
                "sslmode: verify-full",
                "sslrootcert: /etc/platform-tls/postgres/ca.crt",
                // The REST API over HTTPS; patronictl and Patroni verify the other members'.
                "certfile: /etc/platform-tls/postgres/host.crt",
                "keyfile: /etc/platform-tls/postgres/host.key",
                "cacert: /etc/platform-tls/postgres/ca.crt",
                // etcd over TLS, Patroni presenting the host's certificate.
                "protocol: https",
                "cert: /etc/platform-tls/postgres/host.crt",
                "key: /etc/platform-tls/postgres/host.key",
                // The services through HAProxy, over TLS alone.
                "- hostssl \"movies_db\" \"inventory_user\" 192.168.56.11/32 scram-sha-256",
                "- hostssl \"billing_db\" \"billing_user\" 192.168.56.12/32 scram-sha-256",
            ],
        );
        assert!(!yaml.contains("\"billing_db\" \"billing_user\" 192.168.56.11/32"));
        // The member's certificate names 127.0.0.1 too, where the services' HAProxy listens.
        let certificate = text(file(member, "/etc/platform-tls/postgres/host.crt"));
        let names = provisioner::pki::parse(certificate)
            .expect("a certificate")
            .names;
        assert_eq!(names, ["127.0.0.1", address, name], "{name}");
        // The postgres user's key, its alone; a renewed certificate reloads Patroni.
        let key = file(member, "/etc/platform-tls/postgres/host.key");
        assert_eq!((key.mode, key.owner.as_str()), (0o600, "postgres"));
        assert_eq!(key.on_change, [Handler::Reload("patroni".into())]);

        // The same etcd client settings, read at Patroni's start alone: their change restarts it.
        let environment = file(member, "/etc/patroni_env.conf");
        assert_eq!(environment.on_change, [Handler::Restart("patroni".into())]);
        assert_has_lines(
            text(environment),
            &[
                "PATRONI_ETCD3_PROTOCOL=https",
                "PATRONI_ETCD3_HOSTS=192.168.56.13:2379,192.168.56.14:2379,192.168.56.15:2379",
                "PATRONI_ETCD3_CACERT=/etc/platform-tls/postgres/ca.crt",
                "PATRONI_ETCD3_CERT=/etc/platform-tls/postgres/host.crt",
                "PATRONI_ETCD3_KEY=/etc/platform-tls/postgres/host.key",
            ],
        );

        // Debian's own cluster keeps off Patroni's port.
        let start = file(
            member,
            &format!("/etc/postgresql/{PG_VERSION_PLACEHOLDER}/main/start.conf"),
        );
        assert_eq!(start.on_change, [Handler::Stop("postgresql".into())]);
        assert_eq!(text(start).lines().last(), Some("disabled"));

        let etcd = text(file(member, "/etc/default/etcd"));
        assert_has_lines(
            etcd,
            &[
                &format!("ETCD_NAME=\"{name}\""),
                "ETCD_DATA_DIR=\"/var/lib/etcd/platform\"",
                // TLS between machines, both ways verified; plain HTTP on loopback alone.
                &format!("ETCD_LISTEN_PEER_URLS=\"https://{address}:2380\""),
                &format!("ETCD_LISTEN_CLIENT_URLS=\"http://127.0.0.1:2379,https://{address}:2379\""),
                &format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"https://{address}:2380\""),
                &format!("ETCD_ADVERTISE_CLIENT_URLS=\"https://{address}:2379\""),
                "ETCD_INITIAL_CLUSTER=\"node4-vm=https://192.168.56.13:2380,node5-vm=https://192.168.56.14:2380,node6-vm=https://192.168.56.15:2380\"",
                "ETCD_INITIAL_CLUSTER_STATE=\"new\"",
                "ETCD_CERT_FILE=\"/etc/platform-tls/etcd/host.crt\"",
                "ETCD_KEY_FILE=\"/etc/platform-tls/etcd/host.key\"",
                "ETCD_TRUSTED_CA_FILE=\"/etc/platform-tls/etcd/ca.crt\"",
                "ETCD_CLIENT_CERT_AUTH=\"true\"",
                "ETCD_PEER_CERT_FILE=\"/etc/platform-tls/etcd/host.crt\"",
                "ETCD_PEER_KEY_FILE=\"/etc/platform-tls/etcd/host.key\"",
                "ETCD_PEER_TRUSTED_CA_FILE=\"/etc/platform-tls/etcd/ca.crt\"",
                "ETCD_PEER_CLIENT_CERT_AUTH=\"true\"",
            ],
        );
        // The etcd user's key, its alone; a renewed certificate restarts etcd.
        let key = file(member, "/etc/platform-tls/etcd/host.key");
        assert_eq!((key.mode, key.owner.as_str()), (0o600, "etcd"));
        assert_eq!(key.on_change, [Handler::Restart("etcd".into())]);
        assert_eq!(
            file(member, "/etc/default/etcd").on_change,
            [Handler::Restart("etcd".into())]
        );

        // PostgreSQL and Patroni's API for the members and the HAProxy hosts; etcd's peer port
        // for the etcd members; nobody else (the gateway host least of all).
        let rules = text(file(member, "/etc/platform-firewall/rules.nft"));
        let others: Vec<&str> = ["192.168.56.13", "192.168.56.14", "192.168.56.15"]
            .into_iter()
            .filter(|other| *other != address)
            .collect();
        let clients = {
            let mut all = vec!["192.168.56.11", "192.168.56.12"];
            all.extend(&others);
            all.join(", ")
        };

        assert_has_lines(
            rules,
            &[
                &format!("tcp dport 5432 ip saddr {{ {clients} }} accept"),
                &format!("tcp dport 8008 ip saddr {{ {clients} }} accept"),
                &format!("tcp dport 2379 ip saddr {{ {} }} accept", others.join(", ")),
                &format!("tcp dport 2380 ip saddr {{ {} }} accept", others.join(", ")),
            ],
        );
        // The gateway host only as the monitoring host: its exporters.
        for line in rules.lines().filter(|line| line.contains("192.168.56.10")) {
            assert!(
                ["dport 9100 ", "dport 9187 "]
                    .iter()
                    .any(|port| line.contains(port)),
                "{line}"
            );
        }
    }
}

#[test]
fn the_services_reach_the_primary_through_haproxy_on_their_own_host() {
    let hosts = cluster_hosts();
    for (name, service, database) in [
        ("inventory-vm", "inventory", "movies_db"),
        ("billing-vm", "billing", "billing_db"),
    ] {
        let server = host(&hosts, name);
        assert!(server.packages.contains(&"haproxy".to_owned()), "{name}");
        assert!(server.host_units.contains(&"haproxy".to_owned()), "{name}");
        assert!(server.postgres.is_none(), "{name} holds no database");
        let haproxy = file(server, "/etc/haproxy/haproxy.cfg");
        assert_eq!(haproxy.on_change, [Handler::Reload("haproxy".into())]);
        assert_has_lines(
            text(haproxy),
            &[
                "bind 127.0.0.1:5000",
                "option httpchk GET /primary",
                "http-check expect status 200",
                // Patroni's REST API over HTTPS, verified against the platform CA.
                "default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions check-ssl verify required ca-file /etc/platform-tls/haproxy/ca.crt",
                "server node4-vm 192.168.56.13:5432 check port 8008",
                "server node5-vm 192.168.56.14:5432 check port 8008",
                "server node6-vm 192.168.56.15:5432 check port 8008",
            ],
        );
        let ca = file(server, "/etc/platform-tls/haproxy/ca.crt");
        assert_eq!(ca.on_change, [Handler::Reload("haproxy".into())]);
        // TLS through HAProxy, the member verified for 127.0.0.1 against the platform CA.
        let env = text(file(server, &format!("/etc/{service}/{service}.env")));
        assert!(
            env.contains(&format!(
                "@127.0.0.1:5000/{database}?sslmode=verify-full&sslrootcert=%2Fetc%2Fplatform-tls%2F{service}%2Fca.crt\n"
            )),
            "{name}: {env}"
        );
        file(server, &format!("/etc/platform-tls/{service}/ca.crt"));
        let unit = text(file(
            server,
            &format!("/etc/systemd/system/{service}.service"),
        ));
        assert!(
            unit.lines()
                .any(|line| line.starts_with("After=") && line.contains("haproxy.service")),
            "{unit}"
        );
    }
    let gateway = host(&hosts, "gateway-vm");
    // No other host's certificate names 127.0.0.1.
    let certificate = text(file(gateway, "/etc/platform-tls/gateway/host.crt"));
    let names = provisioner::pki::parse(certificate)
        .expect("a certificate")
        .names;
    assert_eq!(names, ["192.168.56.10", "gateway-vm"]);
    assert!(!gateway.packages.contains(&"haproxy".to_owned()));
    assert!(gateway.postgres.is_none());
    // No PostgreSQL of Debian's own configured anywhere: the databases are the cluster's.
    assert!(hosts.iter().all(|host| host
        .files
        .iter()
        .all(|file| !file.path.ends_with("pg_hba.conf"))));
}

#[test]
fn a_cluster_is_refused_where_it_could_not_keep_its_promise_with_the_line_named() {
    let text = committed();
    for (variant, field, words) in [
        (
            text.replacen(
                "roles = [\"inventory\"]",
                "roles = [\"inventory\", \"postgres\"]",
                1,
            ),
            "hosts[1].roles",
            "either on `postgres` hosts",
        ),
        (
            text.replace("roles = [\"patroni\", \"etcd\"]", "roles = [\"etcd\"]")
                .replacen("roles = [\"etcd\"]", "roles = [\"patroni\", \"etcd\"]", 1),
            "hosts[3].roles",
            "2 or more members",
        ),
        (
            text.replacen(
                "roles = [\"patroni\", \"etcd\"]",
                "roles = [\"patroni\"]",
                1,
            ),
            "hosts[5].roles",
            "odd number, 3 or more",
        ),
        (
            text.replace("roles = [\"patroni\", \"etcd\"]", "roles = [\"patroni\"]"),
            "hosts.roles",
            "needs an etcd cluster",
        ),
        (
            text.replace("roles = [\"patroni\", \"etcd\"]", "roles = [\"etcd\"]")
                .replacen(
                    "roles = [\"inventory\"]",
                    "roles = [\"inventory\", \"postgres\"]",
                    1,
                )
                .replacen(
                    "roles = [\"billing\", \"rabbitmq\"]",
                    "roles = [\"billing\", \"rabbitmq\", \"postgres\"]",
                    1,
                ),
            "hosts[3].roles",
            "no host has the role `patroni`",
        ),
    ] {
        let message = load(&variant).expect_err("refused");
        assert!(
            message.contains(&format!("`{field}`")) && message.contains(words),
            "{field}, {words}: {message}"
        );
    }
}

#[test]
fn a_missing_or_weak_cluster_password_is_named_and_never_echoed() {
    let inventory = load(&committed()).expect("valid");
    let example = std::fs::read_to_string(workspace().join(".env.example")).expect("read");
    for (variable, value, problem) in [
        ("PATRONI_REPLICATION_PASSWORD", None, "is missing"),
        (
            "PATRONI_RESTAPI_PASSWORD",
            Some("short-secret"),
            "16 to 512",
        ),
    ] {
        let line = example
            .lines()
            .find(|line| line.starts_with(&format!("{variable}=")))
            .expect("in .env.example");
        let replaced = match value {
            Some(value) => example.replace(line, &format!("{variable}={value}")),
            None => example.replace(&format!("{line}\n"), ""),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(".env");
        std::fs::write(&path, replaced).expect("write");
        let env =
            provisioner::render::env_file::EnvFile::load(&path, &platform().required_variables())
                .expect("loads");
        let error = try_render(&inventory, &env).expect_err("refused");
        assert!(matches!(error, RenderError::PatroniSecret { .. }));
        let message = error.to_string();
        assert!(
            message.contains(variable) && message.contains(problem),
            "{message}"
        );
        assert!(!message.contains("short-secret"), "{message}");
    }
}

/// The fixture's host as a member of a cluster.
fn member(dir: &std::path::Path, first: bool) -> DesiredHost {
    let mut desired = desired_host(dir);
    let postgres: &mut PostgresState = desired.postgres.as_mut().expect("postgres");
    postgres.cluster = Some(PatroniMember { first });
    desired
}

#[test]
fn a_members_roles_and_databases_are_converged_on_the_primary_alone_after_the_backing_phase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let postgres_changes = |desired: &DesiredHost, patroni: PatroniFact, answers: bool| {
        let mut facts = converged(desired);
        facts.patroni = patroni;
        if answers {
            facts
                .postgres
                .as_mut()
                .expect("postgres")
                .roles
                .remove("billing_user");
        } else {
            facts.postgres = None;
        }
        plan(desired, &facts)
            .changes
            .into_iter()
            .filter(|change| change.kind == ChangeKind::Postgres)
            .map(|change| (change.action, change.phase))
            .collect::<Vec<_>>()
    };
    // The primary: compared, and converged in the broker phase, once the cluster runs.
    assert_eq!(
        postgres_changes(&member(dir.path(), false), PatroniFact::Primary, true),
        [(Action::CreateRole(1), Phase::Broker)]
    );
    // A replica holds the same roles, read-only: nothing is planned there.
    assert_eq!(
        postgres_changes(&member(dir.path(), true), PatroniFact::Replica, false),
        []
    );
    // A cluster none of whose members answers (a fresh one): shown on the first member only.
    let fresh = postgres_changes(&member(dir.path(), true), PatroniFact::Silent, false);
    assert_eq!(fresh.len(), 4, "{fresh:?}");
    assert!(fresh.iter().all(|(_, phase)| *phase == Phase::Broker));
    assert_eq!(
        postgres_changes(&member(dir.path(), false), PatroniFact::Silent, false),
        []
    );
}

#[test]
fn a_file_naming_the_postgresql_version_is_compared_with_it_filled_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = member(dir.path(), true);
    desired.files.push(secret(
        "/etc/patroni/config.yml",
        "bin_dir: /usr/lib/postgresql/{pg_version}/bin\n",
        "postgres",
        vec![Handler::Reload("patroni".into())],
    ));
    let mut facts = converged(&desired);
    facts.patroni = PatroniFact::Primary;
    let fact = facts
        .files
        .get_mut("/etc/patroni/config.yml")
        .expect("fact");
    fact.sha256 = provisioner::desired::sha256_hex(b"bin_dir: /usr/lib/postgresql/15/bin\n");
    assert!(plan(&desired, &facts).is_empty());
    let fact = facts
        .files
        .get_mut("/etc/patroni/config.yml")
        .expect("fact");
    fact.sha256 = provisioner::desired::sha256_hex(b"bin_dir: /usr/lib/postgresql/16/bin\n");
    let planned = plan(&desired, &facts);
    assert_eq!(
        targets(&planned),
        [(ChangeKind::File, "/etc/patroni/config.yml".to_string())]
    );
    // Patroni reloads: it never restarts PostgreSQL for a configuration change.
    assert_eq!(
        planned.handlers.into_iter().collect::<Vec<_>>(),
        [Handler::Reload("patroni".into())]
    );
}

#[test]
fn debians_cluster_stops_before_patroni_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = member(dir.path(), true);
    desired.files.push(crate::fixtures::text(
        "/etc/postgresql/{pg_version}/main/start.conf",
        "disabled\n",
        0o644,
        "postgres",
        vec![Handler::Stop("postgresql".into())],
    ));
    desired.host_units = vec!["etcd".into(), "patroni".into()];
    let mut facts = converged(&desired);
    facts
        .files
        .remove("/etc/postgresql/{pg_version}/main/start.conf");
    facts.units.clear();
    let planned = plan(&desired, &facts);
    let backing: Vec<&Handler> = planned.steps_in(Phase::Backing).collect();
    assert_eq!(
        backing,
        [
            &Handler::Stop("postgresql".into()),
            &restart("etcd"),
            &restart("patroni")
        ]
    );
}

#[test]
fn the_cluster_as_patroni_reports_it() {
    let body = r#"{"members": [{"name": "node4-vm", "role": "leader", "state": "running", "api_url": "http://10.0.0.4:8008/patroni", "host": "10.0.0.4", "port": 5432, "timeline": 3}, {"name": "node5-vm", "role": "sync_standby", "state": "streaming", "host": "10.0.0.5", "port": 5432, "timeline": 3, "lag": 0}, {"name": "node6-vm", "role": "replica", "state": "stopped", "host": "10.0.0.6", "port": 5432, "lag": "unknown"}]}"#;
    let members = parse_cluster(body).expect("parsed");
    let shown: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "{} {} {} {:?} {:?}",
                m.name, m.role, m.state, m.timeline, m.lag
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            "node4-vm leader running Some(3) None",
            "node5-vm sync_standby streaming Some(3) Some(0)",
            "node6-vm replica stopped None None",
        ]
    );
    assert_eq!(parse_cluster(""), Err("Patroni did not answer".to_owned()));
    assert!(parse_cluster("curl: (7) Failed to connect")
        .expect_err("no JSON")
        .contains("Failed to connect"));
}

#[test]
fn a_switchover_runs_patronictl_as_postgres_without_questions() {
    assert_eq!(
        provisioner::cli::switchover_command(None),
        "cd / && runuser -u postgres -- patronictl -c /etc/patroni/config.yml switchover --force"
    );
    assert_eq!(
        provisioner::cli::switchover_command(Some("node5-vm")),
        "cd / && runuser -u postgres -- patronictl -c /etc/patroni/config.yml switchover --force --candidate node5-vm"
    );
}

/// Runs etcd's restart script with `systemctl` and `etcdctl` stood in for by scripts that log
/// their arguments (`etcdctl member update` failing `update_failures` times first), for a member
/// whose membership holds `held`. Returns the script's exit status and the log.
fn restart_etcd(active: bool, held: &str, update_failures: u32) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    let log = path("log");
    let write_script = |name: &str, body: String| {
        std::fs::write(path(name), format!("#!/bin/sh\n{body}")).expect("write");
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(path(name))
            .status()
            .expect("chmod");
    };
    let log_line = format!("echo \"$(basename \"$0\") $*\" >> {}", log.display());
    write_script(
        "systemctl",
        format!(
            "{log_line}\ncase \"$1\" in is-active) exit {} ;; esac\nexit 0\n",
            if active { 0 } else { 3 }
        ),
    );
    let failures = path("failures");
    std::fs::write(&failures, update_failures.to_string()).expect("write");
    write_script(
        "etcdctl",
        format!(
            "{log_line}\n\
             case \"$*\" in\n\
             *'member list'*) echo '8e9e05c52164694d, started, node4-vm, {held}, https://10.0.0.4:2379, false'\n\
             echo '91bc3c398fb3c146, started, node5-vm, http://10.0.0.5:2380, https://10.0.0.5:2379, false' ;;\n\
             *'member update'*) left=$(cat {f}); if [ \"$left\" -gt 0 ]; then echo $((left - 1)) > {f}; exit 1; fi ;;\n\
             esac\n",
            f = failures.display()
        ),
    );
    let settings = path("etcd");
    std::fs::write(
        &settings,
        "ETCD_NAME=\"node4-vm\"\nETCD_INITIAL_ADVERTISE_PEER_URLS=\"https://10.0.0.4:2380\"\n",
    )
    .expect("write");
    let script =
        provisioner::converge::apply::etcd_restart_command(&settings.display().to_string())
            // The stand-ins' waits between tries need not last.
            .replace("sleep 2", "true");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env(
            "PATH",
            format!(
                "{}:{}",
                dir.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .status()
        .expect("sh");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    (status.success(), logged)
}

#[test]
fn etcd_restarts_after_its_peer_url_is_updated_in_the_membership() {
    // A cluster made before TLS: the member's http:// URL becomes its https:// one, then it
    // restarts; after two refusals (no quorum for a moment), the third try does it.
    let (ok, log) = restart_etcd(true, "http://10.0.0.4:2380", 2);
    assert!(ok, "{log}");
    let updates = log
        .matches("member update 8e9e05c52164694d --peer-urls=https://10.0.0.4:2380")
        .count();
    assert_eq!(updates, 3, "{log}");
    assert!(log.ends_with("systemctl restart etcd.service\n"), "{log}");

    // The membership already holds what the settings advertise: a plain restart.
    let (ok, log) = restart_etcd(true, "https://10.0.0.4:2380", 0);
    assert!(ok, "{log}");
    assert!(!log.contains("member update"), "{log}");
    assert!(log.ends_with("systemctl restart etcd.service\n"), "{log}");

    // Not running (a first start): nothing to ask, a restart.
    let (ok, log) = restart_etcd(false, "http://10.0.0.4:2380", 0);
    assert!(ok, "{log}");
    assert!(!log.contains("etcdctl"), "{log}");
    assert!(log.ends_with("systemctl restart etcd.service\n"), "{log}");

    // The membership cannot be changed (no quorum): etcd is left running as it was, and the
    // apply fails on this host rather than restart it where its peers would not find it.
    let (ok, log) = restart_etcd(true, "http://10.0.0.4:2380", 10);
    assert!(!ok, "{log}");
    assert_eq!(log.matches("member update").count(), 5, "{log}");
    assert!(!log.contains("restart"), "{log}");
}
