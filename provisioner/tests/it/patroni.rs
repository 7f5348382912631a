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
        for package in ["postgresql", "patroni", "curl", "etcd-server"] {
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
                "- host \"movies_db\" \"inventory_user\" 192.168.56.11/32 scram-sha-256",
                "- host \"billing_db\" \"billing_user\" 192.168.56.12/32 scram-sha-256",
            ],
        );
        assert!(!yaml.contains("\"billing_db\" \"billing_user\" 192.168.56.11/32"));
        // The postgres user's key, its alone; a renewed certificate reloads Patroni.
        let key = file(member, "/etc/platform-tls/postgres/host.key");
        assert_eq!((key.mode, key.owner.as_str()), (0o600, "postgres"));
        assert_eq!(key.on_change, [Handler::Reload("patroni".into())]);

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
                &format!("ETCD_LISTEN_PEER_URLS=\"http://{address}:2380\""),
                "ETCD_INITIAL_CLUSTER=\"node4-vm=http://192.168.56.13:2380,node5-vm=http://192.168.56.14:2380,node6-vm=http://192.168.56.15:2380\"",
                "ETCD_INITIAL_CLUSTER_STATE=\"new\"",
            ],
        );
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
        let env = text(file(server, &format!("/etc/{service}/{service}.env")));
        assert!(
            env.contains(&format!("@127.0.0.1:5000/{database}?sslmode=disable\n")),
            "{name}: {env}"
        );
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
