//! `--json`: the documents `plan`, `apply` and `status` print, checked against the JSON Schemas of
//! `docs/` (the contract `docs/provision-json.md` describes). The binary itself is run: plan and
//! status against this machine over a real sshd (both only read), every command against an
//! unreachable host, and apply's report of a converging host through a scripted fake host.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use provisioner::cli::json_document;
use provisioner::converge::apply::HostReport;

use crate::fixtures::{apply_one, converged, desired_host, host_reporting};
use crate::render::workspace;
use crate::ssh::Lab;

fn validator(schema: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(workspace().join("docs").join(schema)).expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid schema")
}

#[track_caller]
fn assert_fits(schema: &str, document: &Value) {
    let validator = validator(schema);
    let errors: Vec<String> = validator
        .iter_errors(document)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{document:#}");
}

/// Runs `provision --json ARGS…` in `dir` (with `inventory.toml`, `.env` and `bin/` there);
/// returns the exit code and the document on stdout.
fn provision_json(dir: &Path, args: &[&str]) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(dir)
        .arg("--json")
        .args([
            "--templates",
            &workspace().join("templates").to_string_lossy(),
        ])
        .args([
            "--platform",
            &workspace().join("platform.toml").to_string_lossy(),
        ])
        .args(["--binaries", "bin"])
        .args(args)
        .output()
        .expect("provision runs");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let document = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "{args:?}: stdout is no JSON document ({error}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().expect("an exit code"), document)
}

/// `dir` gets an inventory with `hosts` (name, port) all at 127.0.0.1 as root with `key`, the
/// first running every role; `.env.example` as `.env`; stand-ins for the service binaries.
fn deployment(dir: &Path, key: &Path, hosts: &[(&str, u16)]) {
    let mut inventory =
        String::from("[ssh]\nknown_hosts = \"known_hosts\"\nconnect_timeout_secs = 3\n");
    for (index, (name, port)) in hosts.iter().enumerate() {
        let roles = if index == 0 {
            "[\"gateway\", \"inventory\", \"billing\", \"postgres\", \"rabbitmq\"]"
        } else {
            "[\"gateway\"]"
        };
        inventory.push_str(&format!(
            "\n[[hosts]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nport = {port}\nuser = \"root\"\n\
             private_key = \"{}\"\nroles = {roles}\n",
            key.display()
        ));
    }
    inventory.push_str(
        "\n[settings]\ngateway_port = 8080\ninventory_port = 8090\nbilling_health_port = 8081\n\
         queue = \"billing_queue\"\nvhost = \"billing_vhost\"\n",
    );
    std::fs::write(dir.join("inventory.toml"), inventory).expect("inventory");
    std::fs::copy(workspace().join(".env.example"), dir.join(".env")).expect(".env");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let exe = std::env::current_exe().expect("own path");
    for service in ["gateway", "inventory", "billing"] {
        std::fs::copy(&exe, bin.join(service)).expect("stand-in binary");
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

#[test]
fn plan_and_status_of_a_reachable_host_print_the_documented_json() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    deployment(
        dir.path(),
        &lab.path("client_key"),
        &[("this-machine", lab.sshd.port)],
    );

    // This machine is no deployed host: plan has changes (exit 2) and only reads.
    let (code, plan) = provision_json(dir.path(), &["plan"]);
    assert_fits("provision-report.schema.json", &plan);
    assert_eq!(code, 2, "{plan:#}");
    let host = &plan["hosts"][0];
    assert_eq!(host["host"], "this-machine");
    assert_eq!(host["error"], Value::Null, "{plan:#}");
    assert!(host["changed"].as_u64().expect("changed") > 0, "{plan:#}");
    assert_eq!(
        host["changes"].as_array().expect("changes").len() as u64,
        host["changed"].as_u64().expect("changed")
    );

    // Its services are not running: status says so, service by service (exit 1).
    let (code, status) = provision_json(dir.path(), &["status"]);
    assert_fits("provision-status.schema.json", &status);
    assert_eq!(code, 1, "{status:#}");
    let services: Vec<&str> = status["hosts"][0]["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|service| service["name"].as_str().expect("name"))
        .collect();
    assert_eq!(services, ["inventory", "billing", "gateway"]);
    assert_eq!(status["hosts"][0]["queue"]["name"], "billing_queue");
}

#[test]
fn every_command_prints_the_documented_json_for_an_unreachable_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("no_key");
    std::fs::write(&key, "not a key").expect("key");
    deployment(
        dir.path(),
        &key,
        &[("gone", closed_port()), ("gone-too", closed_port())],
    );
    for (command, schema) in [
        ("plan", "provision-report.schema.json"),
        ("apply", "provision-report.schema.json"),
        ("status", "provision-status.schema.json"),
    ] {
        let (code, document) = provision_json(dir.path(), &[command]);
        assert_fits(schema, &document);
        assert_eq!(code, 1, "{command}: {document:#}");
        let hosts = document["hosts"].as_array().expect("hosts");
        assert_eq!(hosts.len(), 2, "{command}: every host has its entry");
        for host in hosts {
            let error = host["error"].as_str().expect("an error");
            assert!(
                error.contains(host["host"].as_str().expect("name")),
                "{error}"
            );
        }
    }
}

#[test]
fn apply_reports_fit_the_documented_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = desired_host(dir.path());
    let mut facts = converged(&desired);
    facts.units.get_mut("billing").expect("billing").active = false;
    let fake = host_reporting(&desired, &facts);
    let report: HostReport = apply_one(&desired, &fake);
    assert_eq!(report.restarted, ["billing"], "{report:?}");
    let text =
        json_document(&[report, HostReport::failed_with("other", "unreachable")]).expect("encodes");
    let document: Value = serde_json::from_str(&text).expect("JSON");
    assert_fits("provision-report.schema.json", &document);
    assert_eq!(document["hosts"][1]["failed"], 1);
}

/// A Patroni member's status carries the cluster as it sees it, or why it could not say.
#[test]
fn a_members_status_fits_the_documented_json() {
    use provisioner::converge::status::parse_status;
    use provisioner::desired::PatroniMember;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = desired_host(dir.path());
    desired.postgres.as_mut().expect("postgres").cluster = Some(PatroniMember { first: true });
    for cluster in [
        r#"{"members": [{"name": "app-vm", "role": "leader", "state": "running", "timeline": 2}, {"name": "b", "role": "sync_standby", "state": "streaming", "timeline": 2, "lag": 0}]}"#,
        "curl: (7) Failed to connect to 127.0.0.1 port 8008",
    ] {
        let output = format!("@@queues\n@@cluster\n{cluster}\n@@end\n");
        let status = parse_status(&desired, "billing_queue", &output).expect("parsed");
        let text = json_document(&[status]).expect("serialises");
        let document: Value = serde_json::from_str(&text).expect("JSON");
        assert_fits("provision-status.schema.json", &document);
    }
}
