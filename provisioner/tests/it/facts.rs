//! The facts script run for real on this machine (PostgreSQL 15 and RabbitMQ are installed here,
//! as on a provisioned host) through a transport that runs `sh -c` locally: what it prints must
//! parse into the roles, databases, vhosts, users, tags and permissions that are really there.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use provisioner::converge::facts::{self, PatroniFact};
use provisioner::converge::plan::{plan, ChangeKind};
use provisioner::converge::transport::{ExecOutput, Transport, TransportError};
use provisioner::desired::{
    Connection, DesiredHost, PatroniMember, PostgresDatabase, PostgresRole, PostgresState,
    RabbitMqCluster, RabbitMqState, Secret,
};

/// This machine as a host: commands run through `sh -c` as the test's user (root).
#[derive(Debug)]
pub(crate) struct LocalShell;

impl Transport for LocalShell {
    fn host(&self) -> &str {
        "localhost"
    }

    fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        _sudo: bool,
    ) -> Result<ExecOutput, TransportError> {
        let mut child = Command::new("sh")
            .args(["-c", command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut input = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut input, stdin.unwrap_or_default()).expect("stdin written");
        drop(input);
        let output = child.wait_with_output().expect("sh finishes");
        Ok(ExecOutput {
            status: output.status.code().unwrap_or(-1),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }
}

fn psql(sql: &str) {
    let status = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .current_dir("/")
        .stdout(Stdio::null())
        .status()
        .expect("psql runs");
    assert!(status.success(), "psql failed: {sql}");
}

/// A login role with a password, dropped when the test ends (the server is shared).
struct TestRole(String);

impl TestRole {
    fn create(password: &str) -> Self {
        let name = format!("provision_facts_{}", std::process::id());
        psql(&format!("DROP ROLE IF EXISTS {name}"));
        // PostgreSQL 15 stores a SCRAM-SHA-256 verifier (password_encryption's default).
        psql(&format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"));
        Self(name)
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        psql(&format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

pub(crate) fn desired(role: &str, password: &str) -> DesiredHost {
    DesiredHost {
        name: "localhost".into(),
        connection: Connection {
            address: "127.0.0.1".into(),
            port: 22,
            user: "root".into(),
            private_key: PathBuf::from("/nonexistent/key"),
            sudo: false,
            known_hosts: PathBuf::from("/nonexistent/known_hosts"),
            connect_timeout: Duration::from_secs(5),
        },
        packages: vec!["postgresql".into()],
        system_users: Vec::new(),
        postgres: Some(PostgresState {
            roles: vec![PostgresRole {
                name: role.into(),
                password: Secret::new(password),
            }],
            databases: vec![PostgresDatabase {
                name: "postgres".into(),
                owner: "postgres".into(),
            }],
            cluster: None,
        }),
        // What the default RabbitMQ of this machine holds (guest/guest, administrator, all on /).
        rabbitmq: Some(RabbitMqState {
            vhost: "/".into(),
            user: "guest".into(),
            password: Secret::new("guest"),
            permissions: (".*".into(), ".*".into(), ".*".into()),
            remove_guest: false,
            tags: vec!["administrator".into()],
            cluster: None,
        }),
        files: Vec::new(),
        binaries: Vec::new(),
        services: Vec::new(),
        host_units: Vec::new(),
    }
}

/// The regression: the script's SQL was quoted so that psql got `coalesce(rolpassword, )`, a
/// syntax error, so no role was ever seen and a second apply ran CREATE ROLE on existing roles.
#[test]
fn existing_roles_and_databases_are_seen_and_their_password_checked() {
    let role = TestRole::create("facts-pw-1");
    let host = desired(&role.0, "facts-pw-1");
    let gathered = facts::gather(&LocalShell, &host).expect("facts");
    let postgres = gathered
        .postgres
        .as_ref()
        .expect("PostgreSQL answers the facts script");
    assert_eq!(postgres.roles.get(&role.0), Some(&true), "{postgres:?}");
    assert_eq!(postgres.roles.get("postgres"), Some(&false));
    assert_eq!(
        postgres.databases.get("postgres").map(String::as_str),
        Some("postgres")
    );
    let postgres_changes: Vec<_> = plan(&host, &gathered)
        .changes
        .into_iter()
        .filter(|change| matches!(change.kind, ChangeKind::Postgres | ChangeKind::Rabbitmq))
        .map(|change| format!("{} {}", change.target, change.detail))
        .collect();
    assert!(postgres_changes.is_empty(), "{postgres_changes:?}");

    let other_password = desired(&role.0, "facts-pw-2");
    let gathered = facts::gather(&LocalShell, &other_password).expect("facts");
    let changes: Vec<_> = plan(&other_password, &gathered)
        .changes
        .into_iter()
        .filter(|change| change.kind == ChangeKind::Postgres)
        .map(|change| (change.target, change.detail))
        .collect();
    assert_eq!(
        changes,
        [(format!("role {}", role.0), "password changes".to_string())]
    );
}

#[test]
fn rabbitmq_users_tags_permissions_and_password_are_read() {
    let host = desired("postgres", "unused");
    let gathered = facts::gather(&LocalShell, &host).expect("facts");
    let rabbitmq = gathered.rabbitmq.as_ref().expect("RabbitMQ answers");
    assert!(rabbitmq.vhosts.contains("/"), "{rabbitmq:?}");
    assert_eq!(
        rabbitmq.users.get("guest"),
        Some(&vec!["administrator".to_string()])
    );
    assert_eq!(
        rabbitmq.permissions.get("guest"),
        Some(&(".*".to_string(), ".*".to_string(), ".*".to_string()))
    );
    assert!(rabbitmq.password_matches);
    assert!(
        rabbitmq.cluster_nodes.is_empty(),
        "membership is asked only of a cluster's nodes"
    );
}

/// RabbitMQ's salted SHA-256, checked against a hash this machine's broker made (guest/guest).
#[test]
fn rabbitmq_password_hashes_are_checked_locally() {
    let hash = "bP+qVf+KnoVj9SiM8ns/b2MrFGEWVYDBuFsd6hp8meLIOew4";
    let sha256 = "rabbit_password_hashing_sha256";
    assert!(facts::rabbit_password_matches(sha256, hash, "guest"));
    assert!(!facts::rabbit_password_matches(sha256, hash, "guesT"));
    assert!(!facts::rabbit_password_matches(
        "rabbit_password_hashing_md5",
        hash,
        "guest"
    ));
    assert!(!facts::rabbit_password_matches(
        sha256,
        "not base64!",
        "guest"
    ));
    let made = facts::rabbit_password_hash(*b"abcd", "p@ss word");
    assert!(facts::rabbit_password_matches(sha256, &made, "p@ss word"));
}

/// A cluster's node reports its cluster: this machine's broker is a cluster of one.
#[test]
fn a_cluster_node_reports_its_members() {
    let mut host = desired("postgres", "unused");
    let node = String::from_utf8(
        std::process::Command::new("rabbitmqctl")
            .args(["-s", "eval", "node()."])
            .output()
            .expect("rabbitmqctl runs")
            .stdout,
    )
    .expect("utf-8")
    .trim()
    // An Erlang atom: quoted when the host name has a hyphen ('rabbit@clean-room').
    .trim_matches('\'')
    .to_owned();
    let rabbitmq = host.rabbitmq.as_mut().expect("rabbitmq");
    rabbitmq.cluster = Some(RabbitMqCluster {
        node: node.clone(),
        seed: node.clone(),
        nodes: vec![node.clone()],
    });
    let gathered = facts::gather(&LocalShell, &host).expect("facts");
    let rabbitmq = gathered.rabbitmq.as_ref().expect("RabbitMQ answers");
    assert_eq!(rabbitmq.cluster_nodes, [node.clone()].into());
    assert_eq!(rabbitmq.running_nodes, [node].into());
    // The printer writes what the parser reads.
    let again = facts::parse_facts(&host, &facts::script_output(&host, &gathered));
    assert_eq!(again, gathered);
}

/// PostgreSQL installed but psql failing (server down, broken query) is an error naming the host
/// and psql's message, not "no roles", which would make apply create existing roles again.
#[test]
fn a_failing_psql_is_an_error_not_an_empty_set_of_roles() {
    let host = desired("inventory_user", "pw");
    let fake = provisioner::converge::transport::fake::FakeTransport::new("localhost");
    fake.answer(
        "sh -s",
        0,
        "@@arch\nx86_64\n@@pgversion\n15\n@@packages\npostgresql ii \n\
         @@pgerror psql: error: connection to server on socket \"/var/run/postgresql/.s.PGSQL.5432\" failed\n\
         @@pgerror psql: error: connection to server on socket \"/var/run/postgresql/.s.PGSQL.5432\" failed\n\
         @@end\n",
    );
    let error = facts::gather(&fake, &host).expect_err("psql failed");
    let message = error.to_string();
    assert!(
        message.starts_with("localhost: PostgreSQL is installed but psql")
            && message.contains("connection to server"),
        "{message}"
    );
}

/// Runs a facts script on this machine: its whole output, and its lines starting with `marker`.
fn run_script(script: &str, marker: &str) -> (String, Vec<String>) {
    let output = LocalShell
        .run("sh -s", Some(script.as_bytes()), true)
        .expect("script runs")
        .stdout_text();
    let errors = output
        .lines()
        .filter(|line| line.starts_with(marker))
        .map(str::to_string)
        .collect();
    (output, errors)
}

/// The script's own psql error lines, for real: a query PostgreSQL rejects comes back as one
/// `@@pgerror` line carrying psql's first line.
#[test]
fn the_script_reports_psql_errors_in_one_line() {
    let host = desired("postgres", "unused");
    let script = facts::facts_script(&host).replace("from pg_authid", "from no_such_table");
    let (output, errors) = run_script(&script, "@@pgerror");
    assert_eq!(errors.len(), 1, "{output}");
    assert!(errors[0].contains("no_such_table"), "{}", errors[0]);
    assert!(output.contains("@@pgdatabases\n"), "{output}");
}

/// RabbitMQ installed but rabbitmqctl failing (broker stopped, epmd unreachable) is an error
/// naming the host and rabbitmqctl's first line, not a broker without vhost or user, which would
/// make apply try to create them.
#[test]
fn a_failing_rabbitmqctl_is_an_error_not_an_empty_broker() {
    let host = desired("postgres", "unused");
    let fake = provisioner::converge::transport::fake::FakeTransport::new("billing-vm");
    fake.answer(
        "sh -s",
        0,
        "@@arch\nx86_64\n@@pgversion\n15\n@@packages\n\
         @@pgroles\npostgres\t\n@@pgdatabases\npostgres\tpostgres\n\
         @@rmqdefinitions\n\
         @@rmqerror Error: unable to perform an operation on node 'rabbit@billing'. Please see diagnostics information and suggestions below.\n\
         \n@@end\n",
    );
    let error = facts::gather(&fake, &host).expect_err("rabbitmqctl failed");
    assert_eq!(
        error.to_string(),
        "localhost: RabbitMQ is installed but rabbitmqctl fails: Error: unable to perform an \
         operation on node 'rabbit@billing'. Please see diagnostics information and suggestions below."
    );
}

/// The script's own rabbitmqctl error lines, for real: a command rabbitmqctl rejects comes back
/// as one `@@rmqerror` line carrying its first error line.
#[test]
fn the_script_reports_rabbitmqctl_errors_in_one_line() {
    let host = desired("postgres", "unused");
    let script = facts::facts_script(&host).replace("export_definitions", "export_definitionz");
    let (output, errors) = run_script(&script, "@@rmqerror");
    assert_eq!(errors.len(), 1, "{output}");
    assert!(errors[0].contains("export_definitionz"), "{}", errors[0]);
    // gather parses that very output into the error.
    let fake = provisioner::converge::transport::fake::FakeTransport::new("localhost");
    fake.answer("sh -s", 0, &output);
    let error = facts::gather(&fake, &host).expect_err("rabbitmqctl failed");
    assert!(
        error
            .to_string()
            .starts_with("localhost: RabbitMQ is installed but rabbitmqctl fails: ")
            && error.to_string().contains("export_definitionz"),
        "{error}"
    );
}

#[test]
fn each_fact_parses_what_its_printer_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = crate::fixtures::desired_host(dir.path());
    let mut facts = crate::fixtures::converged(&desired);
    assert_eq!(
        facts::parse_facts(&desired, &facts::script_output(&desired, &facts)),
        facts
    );
    // Drift of every kind survives the round trip too.
    facts.arch = Some("aarch64".into());
    facts.packages.remove("postgresql");
    facts.units.get_mut("billing").expect("billing").active = false;
    let postgres = facts.postgres.as_mut().expect("postgres");
    *postgres.roles.values_mut().next().expect("a role") = false;
    postgres.databases.clear();
    let rabbitmq = facts.rabbitmq.as_mut().expect("rabbitmq");
    rabbitmq.password_matches = false;
    rabbitmq.permissions.clear();
    facts.started.insert(
        "inventory".into(),
        facts::Timestamp(1_796_204_508_123_456_000),
    );
    facts.modified.insert(
        "/etc/inventory/inventory.env".into(),
        facts::Timestamp(1_796_204_509_000_000_001),
    );
    facts
        .modified
        .insert("/usr/local/bin/billing".into(), facts::Timestamp(42));
    let output = facts::script_output(&desired, &facts);
    assert_eq!(facts::parse_facts(&desired, &output), facts);

    // A cluster's node also reports its membership.
    let mut desired = desired;
    desired.rabbitmq.as_mut().expect("rabbitmq").cluster = Some(RabbitMqCluster {
        node: "rabbit@b".into(),
        seed: "rabbit@a".into(),
        nodes: vec!["rabbit@a".into(), "rabbit@b".into(), "rabbit@c".into()],
    });
    let rabbitmq = facts.rabbitmq.as_mut().expect("rabbitmq");
    rabbitmq.cluster_nodes = ["rabbit@a".to_string(), "rabbit@b".into()].into();
    rabbitmq.running_nodes = ["rabbit@b".to_string()].into();
    let output = facts::script_output(&desired, &facts);
    assert_eq!(facts::parse_facts(&desired, &output), facts);

    // A Patroni member reports whether it is the primary; only the primary reports its roles.
    desired.postgres.as_mut().expect("postgres").cluster = Some(PatroniMember { first: false });
    for patroni in [
        PatroniFact::Primary,
        PatroniFact::Replica,
        PatroniFact::Silent,
    ] {
        facts.patroni = patroni;
        let output = facts::script_output(&desired, &facts);
        assert_eq!(facts::parse_facts(&desired, &output), facts, "{patroni:?}");
    }

    // Every section the script can print is a fact's, and the script asks each fact in turn.
    let script = facts::facts_script(&desired);
    // Patroni is asked over HTTPS on loopback, for the name its certificate holds.
    let name = &desired.name;
    assert!(
        script.contains(&format!(
            "--cacert /etc/platform-tls/postgres/ca.crt --resolve {name}:8008:127.0.0.1 https://{name}:8008/primary"
        )),
        "{script}"
    );
    for fact in &facts::FACTS {
        for section in fact.sections {
            assert!(script.contains(&format!("@@{section}")), "{section}");
        }
    }
}

/// On a Patroni member whose Patroni does not answer (here: nothing listens on 8008), PostgreSQL
/// is not asked: its roles are the primary's, and a replica or a member still starting must not
/// look like a database without them.
#[test]
fn a_patroni_member_that_is_not_the_primary_is_not_asked_for_roles() {
    let mut desired = desired("postgres", "unused-password");
    desired.postgres.as_mut().expect("postgres").cluster = Some(PatroniMember { first: false });
    let facts = facts::gather(&LocalShell, &desired).expect("facts");
    assert_eq!(facts.patroni, PatroniFact::Silent);
    assert_eq!(facts.postgres, None);
    let planned = plan(&desired, &facts);
    assert!(
        planned
            .changes
            .iter()
            .all(|change| change.kind != ChangeKind::Postgres),
        "{:?}",
        planned.changes
    );
}
