//! The desired state of one host: what rendering the inventory produces, and what `plan` compares
//! with the host's facts and `apply` converges the host to.
//!
//! This is the contract between the two halves of the provisioner: `inventory`/`env_file`/`render`
//! build it without any network; `transport`/`plan`/`apply` consume it without knowing about TOML or
//! templates.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// A value that must never reach a log, a `Debug` output or a command line; its memory is wiped
/// when it is dropped (`secrecy`).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret itself; call only where it is written to a 0600 file or a process's stdin.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to reach a host over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Private key file, already resolved against the inventory file's folder.
    pub private_key: PathBuf,
    /// Prefix privileged commands with `sudo -n`.
    pub sudo: bool,
    /// The inventory's `[ssh] known_hosts` file, resolved: first contact recorded, a changed key refused.
    pub known_hosts: PathBuf,
    /// The inventory's `[ssh] connect_timeout_secs`.
    pub connect_timeout: Duration,
}

/// A CPU architecture the hosts may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// Parses the names `uname -m` prints (`arm64` too, as Debian calls it).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "x86_64" | "amd64" => Some(Self::X86_64),
            "aarch64" | "arm64" => Some(Self::Aarch64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything one host must end up with.
#[derive(Debug, Clone)]
pub struct DesiredHost {
    pub name: String,
    pub connection: Connection,
    /// Debian packages that must be installed (e.g. `postgresql`, `rabbitmq-server`).
    pub packages: Vec<String>,
    /// System accounts the services run as (no login shell, no home).
    pub system_users: Vec<String>,
    /// PostgreSQL roles and databases, when the host runs PostgreSQL.
    pub postgres: Option<PostgresState>,
    /// RabbitMQ vhost, user and permissions, when the host runs the broker.
    pub rabbitmq: Option<RabbitMqState>,
    /// Rendered text files: units, env files, PostgreSQL and RabbitMQ configuration.
    pub files: Vec<DesiredFile>,
    /// Service binaries pushed from the workspace.
    pub binaries: Vec<DesiredBinary>,
    /// systemd services of the platform on this host, in start order.
    pub services: Vec<ServiceSpec>,
    /// The provisioner's own units besides the services (e.g. `platform-firewall`, a oneshot):
    /// kept enabled and active, (re)started through [`Handler`]s in the backing phase, before
    /// any service, and never health-checked or reported as a restarted service.
    pub host_units: Vec<String>,
}

impl DesiredHost {
    /// Whether `unit` is one of the platform services on this host, which restart in phase 2
    /// and are health-checked, rather than PostgreSQL, RabbitMQ or the provisioner's own units.
    pub fn runs_service(&self, unit: &str) -> bool {
        self.services.iter().any(|service| service.unit == unit)
    }

    /// Whether its PostgreSQL is a member of a Patroni cluster.
    pub fn patroni_member(&self) -> bool {
        self.postgres
            .as_ref()
            .is_some_and(|postgres| postgres.cluster.is_some())
    }

    /// Every unit a change may restart: the platform services, then the units the files' handlers
    /// restart (RabbitMQ, PostgreSQL, keepalived, the firewall), each once.
    pub fn restarted_units(&self) -> Vec<&str> {
        let mut units: Vec<&str> = self
            .services
            .iter()
            .map(|service| service.unit.as_str())
            .collect();
        for file in &self.files {
            for handler in &file.on_change {
                if let Handler::Restart(unit) = handler {
                    if !units.contains(&unit.as_str()) {
                        units.push(unit);
                    }
                }
            }
        }
        units
    }

    /// The paths whose writing restarts `unit`: the files that ask for its restart (its unit, its
    /// env file, a daemon's configuration) and its binary. A running process older than one of
    /// them missed a restart.
    pub fn restart_inputs<'a>(&'a self, unit: &'a str) -> impl Iterator<Item = &'a str> {
        self.files
            .iter()
            .filter(move |file| {
                file.on_change
                    .iter()
                    .any(|handler| matches!(handler, Handler::Restart(name) if name == unit))
            })
            .map(|file| file.path.as_str())
            .chain(
                self.binaries
                    .iter()
                    .filter(move |binary| binary.service == unit)
                    .map(|binary| binary.remote_path.as_str()),
            )
    }
}

/// Stands in a [`DesiredFile::path`] for the PostgreSQL major version installed on the host
/// (`14` on Ubuntu 22.04, `15` on Debian 12), e.g.
/// `/etc/postgresql/{pg_version}/main/pg_hba.conf`.
///
/// Render cannot know it (no network); plan/apply fill it in with [`resolve_pg_version`] from a
/// fact: the directory name listed by `ls /etc/postgresql` on the host (the highest number if there
/// are several). apply reads that fact again after installing the `postgresql` package, so a
/// fresh host gets its files in the right place; plan on a host without PostgreSQL yet shows such
/// files as to be created, with the placeholder left in the path.
pub const PG_VERSION_PLACEHOLDER: &str = "{pg_version}";

/// `path` with [`PG_VERSION_PLACEHOLDER`] replaced by `pg_version` (e.g. `"15"`).
pub fn resolve_pg_version(path: &str, pg_version: &str) -> String {
    path.replace(PG_VERSION_PLACEHOLDER, pg_version)
}

/// `bytes` with [`PG_VERSION_PLACEHOLDER`] replaced by `pg_version`, when they hold it (Patroni's
/// configuration names PostgreSQL's binaries and data folder by version).
pub fn resolve_pg_version_in<'a>(
    bytes: &'a [u8],
    pg_version: Option<&str>,
) -> std::borrow::Cow<'a, [u8]> {
    let placeholder = PG_VERSION_PLACEHOLDER.as_bytes();
    match pg_version {
        Some(version) if bytes.windows(placeholder.len()).any(|w| w == placeholder) => {
            let text = String::from_utf8_lossy(bytes);
            std::borrow::Cow::Owned(resolve_pg_version(&text, version).into_bytes())
        }
        _ => std::borrow::Cow::Borrowed(bytes),
    }
}

/// A file the host must hold, byte for byte.
#[derive(Debug, Clone)]
pub struct DesiredFile {
    pub path: String,
    pub content: FileContent,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// What must happen when this file changes.
    pub on_change: Vec<Handler>,
}

/// File bytes; secret files are never shown in a diff.
#[derive(Clone)]
pub enum FileContent {
    Text(String),
    /// Holds credentials: plan shows only that it changes, never its content.
    SecretText(Secret),
}

impl fmt::Debug for FileContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.debug_tuple("Text").field(&text.len()).finish(),
            Self::SecretText(_) => f.write_str("SecretText(***)"),
        }
    }
}

impl FileContent {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::SecretText(secret) => secret.expose().as_bytes(),
        }
    }

    /// Lower-case hex SHA-256 of the bytes, as `sha256sum` prints it on a host.
    pub fn sha256(&self) -> String {
        sha256_hex(self.bytes())
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// A reaction to a change, run once per apply however many files asked for it (Ansible's handlers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Handler {
    /// `systemctl daemon-reload` (a unit file changed).
    DaemonReload,
    /// Restart this systemd unit, e.g. `inventory` or `postgresql`.
    Restart(String),
    /// Reload this systemd unit, e.g. `postgresql` after a pg_hba change.
    Reload(String),
    /// Stop this systemd unit, before any restart: Debian's own PostgreSQL cluster on a Patroni
    /// member, which would hold Patroni's port.
    Stop(String),
}

/// A service binary: pushed when its SHA-256 differs, atomically, the previous one kept beside it.
#[derive(Debug, Clone)]
pub struct DesiredBinary {
    /// The unit it belongs to (`gateway`, `inventory`, `billing`): restarted when the binary changes.
    pub service: String,
    pub local_path: PathBuf,
    /// e.g. `/usr/local/bin/inventory`; the previous binary is kept as `<path>.previous`.
    pub remote_path: String,
    /// Lower-case hex SHA-256 of `local_path`, computed once when the binary was checked, and
    /// compared with what `sha256sum` prints on the host.
    pub sha256: String,
    /// The architecture it was built for, read from its ELF header when it was checked: a host
    /// of another architecture is refused before anything is pushed.
    pub arch: Arch,
}

/// A platform service running under systemd.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Unit name without `.service`.
    pub unit: String,
    /// Asked on the host itself (e.g. `http://127.0.0.1:8080/health`, or
    /// `https://<its address>:8080/health` when it serves HTTPS) after a restart.
    pub health_url: String,
    /// Asked on the host itself by `status` (e.g. `http://127.0.0.1:8080/ready`).
    pub ready_url: String,
    /// The path of its socket unit when systemd holds its listening socket (a service others
    /// call): a restart then keeps the socket, and rebinds it only when this file was rewritten.
    pub socket: Option<String>,
    /// When it serves HTTPS: the files curl checks it with, and proves itself with (the
    /// service asks for a client certificate).
    pub tls: Option<ClientTls>,
}

impl ServiceSpec {
    /// curl's arguments to ask `url` of this service, shell-quoted: the URL, after the TLS
    /// files when it serves HTTPS.
    pub fn curl_args(&self, url: &str) -> String {
        let url = crate::converge::transport::shell_quote(url);
        match &self.tls {
            Some(tls) => format!(
                "--cacert {} --cert {} --key {} {url}",
                crate::converge::transport::shell_quote(&tls.ca_file),
                crate::converge::transport::shell_quote(&tls.cert_file),
                crate::converge::transport::shell_quote(&tls.key_file),
            ),
            None => url,
        }
    }
}

/// The CA a client verifies a server with, and the certificate and key it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone)]
pub struct PostgresState {
    pub roles: Vec<PostgresRole>,
    pub databases: Vec<PostgresDatabase>,
    /// When this PostgreSQL is a member of a Patroni cluster: the roles and databases are the
    /// cluster's, converged on whichever member is the primary.
    pub cluster: Option<PatroniMember>,
}

/// A member of the Patroni cluster holding the platform's databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatroniMember {
    /// The first member in the inventory: on a cluster none of whose members answers yet (a
    /// fresh one), plan shows the roles and databases to create there.
    pub first: bool,
}

#[derive(Debug, Clone)]
pub struct PostgresRole {
    pub name: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct PostgresDatabase {
    pub name: String,
    pub owner: String,
}

#[derive(Debug, Clone)]
pub struct RabbitMqState {
    pub vhost: String,
    pub user: String,
    pub password: Secret,
    /// Configure, write and read permission regexes on the vhost.
    pub permissions: (String, String, String),
    /// Delete the default `guest` user.
    pub remove_guest: bool,
    /// User tags (`rabbitmqctl set_user_tags`), e.g. `management` so the user can log in to the
    /// management UI that the Vagrantfile forwards to the host.
    pub tags: Vec<String>,
    /// When the broker runs on several hosts: this node's place in the cluster.
    pub cluster: Option<RabbitMqCluster>,
}

/// A node of a RabbitMQ cluster. Nodes are named `rabbit@<inventory name>`; every node but the
/// seed joins the seed's cluster when it is not in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitMqCluster {
    /// This host's node.
    pub node: String,
    /// The node the others join: the first broker host's.
    pub seed: String,
    /// Every node, in the inventory's order.
    pub nodes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let file = DesiredFile {
            path: "/etc/billing/billing.env".into(),
            content: FileContent::SecretText(Secret::new("DATABASE_URL=postgres://u:hunter2@h/db")),
            mode: 0o600,
            owner: "billing".into(),
            group: "billing".into(),
            on_change: vec![Handler::Restart("billing".into())],
        };
        let shown = format!("{file:?} {:?}", Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
