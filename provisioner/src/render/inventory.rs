//! `inventory.toml`: a raw serde model that keeps every value's position, then validation into
//! a typed [`Inventory`] whose every error names the file, the line, the column and the field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::render::binaries::Arch;
use crate::desired::{Connection, Role};
use crate::render::env_file::{is_secret_name, EnvFile};

/// What went wrong, located precisely enough that the user can fix it without guessing.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The I/O cause is the source, printed by the command\'s error chain, so not repeated here.
    #[error("cannot read inventory {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}, line {line}, column {column}, field `{field}`: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

/// The validated inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file it was read from.
    pub path: PathBuf,
    pub ssh: SshSettings,
    /// In file order, names unique.
    pub hosts: Vec<Host>,
    pub settings: Settings,
}

#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Resolved against the inventory's folder.
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub connection: Connection,
    /// Without duplicates, in the file's order.
    pub roles: Vec<Role>,
    /// Name of the host whose PostgreSQL holds the databases of the services running here;
    /// `Some` exactly when this host runs inventory or billing.
    pub database_host: Option<String>,
}

impl Host {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The address other hosts use to reach this one (the SSH address).
    pub fn address(&self) -> &str {
        &self.connection.address
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway_port: u16,
    pub inventory_port: u16,
    pub billing_health_port: u16,
    pub queue: String,
    pub vhost: String,
    /// `RUST_LOG` of every service; `info` unless set.
    pub rust_log: String,
    /// Architecture of every host; `x86_64` unless set.
    pub target_arch: Arch,
}

impl Inventory {
    /// Reads and validates `path`, interpolating `${VAR}` from `env`.
    pub fn load(path: &Path, env: &EnvFile) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, env)
    }

    /// Validates `text` as if read from `path` (whose folder anchors relative paths).
    pub fn parse(path: &Path, text: &str, env: &EnvFile) -> Result<Self, InventoryError> {
        let raw: RawInventory =
            toml::from_str(text).map_err(|error| syntax_error(path, text, &error))?;
        Validator { path, text, env }.validate(raw)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// Hosts with `role`, in file order.
    pub fn hosts_with(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |host| host.has(role))
    }

    /// The one host running RabbitMQ (validation guarantees there is exactly one).
    pub fn broker_host(&self) -> &Host {
        self.hosts_with(Role::Rabbitmq)
            .next()
            .unwrap_or(&self.hosts[0])
    }

    /// The host whose PostgreSQL serves the services of `host`.
    pub fn database_host_of(&self, host: &Host) -> Option<&Host> {
        host.database_host
            .as_deref()
            .and_then(|name| self.host(name))
    }
}

// ---------------------------------------------------------------------------------------------
// Raw model: exactly the file's shape, each value with its byte span.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    ssh: RawSsh,
    hosts: Spanned<Vec<Spanned<RawHost>>>,
    settings: Spanned<RawSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    known_hosts: Option<Spanned<String>>,
    connect_timeout_secs: Option<Spanned<RawNumber>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Spanned<String>,
    address: Spanned<String>,
    port: Option<Spanned<RawNumber>>,
    user: Spanned<String>,
    private_key: Spanned<String>,
    sudo: Option<Spanned<bool>>,
    roles: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    gateway_port: Spanned<RawNumber>,
    inventory_port: Spanned<RawNumber>,
    billing_health_port: Spanned<RawNumber>,
    queue: Spanned<String>,
    vhost: Spanned<String>,
    rust_log: Option<Spanned<String>>,
    target_arch: Option<Spanned<String>>,
}

/// A number written as such, or as a string (so it can come from `${VAR}`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawNumber {
    Integer(i64),
    Text(String),
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    env: &'a EnvFile,
}

impl Validator<'_> {
    fn error(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> InventoryError {
        let (line, column) = line_column(self.text, span.start);
        InventoryError::Invalid {
            file: self.path.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The string with every `${VAR}` replaced by its value in the env file.
    fn interpolate(&self, value: &Spanned<String>, field: &str) -> Result<String, InventoryError> {
        let mut out = String::new();
        let mut rest = value.get_ref().as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| self.error(value.span(), field, "`${` without a closing `}`"))?;
            let name = &after[..end];
            if is_secret_name(name) {
                return Err(self.error(
                    value.span(),
                    field,
                    format!("${{{name}}} is a password: passwords stay in the env file and never go in the inventory"),
                ));
            }
            let replacement = self.env.get(name).ok_or_else(|| {
                self.error(
                    value.span(),
                    field,
                    format!(
                        "variable {name} is not set in {} (see .env.example)",
                        self.env.path().display()
                    ),
                )
            })?;
            out.push_str(replacement);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn non_empty(&self, value: &Spanned<String>, field: &str) -> Result<String, InventoryError> {
        let text = self.interpolate(value, field)?;
        if text.trim().is_empty() {
            return Err(self.error(value.span(), field, "must not be empty"));
        }
        Ok(text)
    }

    fn number(&self, value: &Spanned<RawNumber>, field: &str) -> Result<i64, InventoryError> {
        match value.get_ref() {
            RawNumber::Integer(number) => Ok(*number),
            RawNumber::Text(text) => {
                let spanned = Spanned::new(value.span(), text.clone());
                let text = self.interpolate(&spanned, field)?;
                text.trim().parse().map_err(|_| {
                    self.error(value.span(), field, format!("`{text}` is not a number"))
                })
            }
        }
    }

    fn port(&self, value: &Spanned<RawNumber>, field: &str) -> Result<u16, InventoryError> {
        let number = self.number(value, field)?;
        u16::try_from(number)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                self.error(
                    value.span(),
                    field,
                    format!("{number} is not a TCP port (1 to 65535)"),
                )
            })
    }

    fn relative_path(
        &self,
        value: &Spanned<String>,
        field: &str,
    ) -> Result<PathBuf, InventoryError> {
        let text = self.non_empty(value, field)?;
        let folder = self.path.parent().unwrap_or_else(|| Path::new(""));
        Ok(folder.join(text))
    }

    /// A private key path may hold one `*` as a whole folder name, chosen when connecting: the one
    /// existing file it matches (`.vagrant/machines/gateway-vm/*/private_key` is the key of the
    /// gateway-vm machine whichever Vagrant provider made it).
    fn key_pattern(
        &self,
        value: &Spanned<String>,
        path: &Path,
        field: &str,
    ) -> Result<(), InventoryError> {
        let text = path.to_string_lossy();
        let wildcards = text.matches('*').count();
        let whole_segments = path
            .components()
            .filter(|component| component.as_os_str() == "*")
            .count();
        if wildcards > 1 || wildcards != whole_segments {
            return Err(self.error(
                value.span(),
                field,
                format!(
                    "`{text}`: a key path may hold one `*`, and only as a whole folder name \
                     (`.vagrant/machines/NAME/*/private_key`)"
                ),
            ));
        }
        if path.file_name().is_some_and(|name| name == "*") {
            return Err(self.error(
                value.span(),
                field,
                format!("`{text}`: the `*` stands for a folder, the file must be named"),
            ));
        }
        Ok(())
    }

    fn validate(&self, raw: RawInventory) -> Result<Inventory, InventoryError> {
        let ssh = self.ssh(&raw.ssh)?;
        let settings = self.settings(&raw.settings)?;
        let hosts_span = raw.hosts.span();
        let raw_hosts = raw.hosts.into_inner();
        if raw_hosts.is_empty() {
            return Err(self.error(hosts_span, "hosts", "at least one host is needed"));
        }
        let mut hosts = Vec::new();
        let mut seen = BTreeMap::new();
        for (index, raw_host) in raw_hosts.iter().enumerate() {
            let host = self.host(index, raw_host.get_ref(), &ssh)?;
            if let Some(first) = seen.insert(host.name.clone(), index) {
                return Err(self.error(
                    raw_host.get_ref().name.span(),
                    &format!("hosts[{index}].name"),
                    format!(
                        "host name `{}` is already used by hosts[{first}]",
                        host.name
                    ),
                ));
            }
            hosts.push(host);
        }
        self.check_roles(&raw_hosts, &hosts, hosts_span.clone())?;
        self.resolve_databases(&raw_hosts, &mut hosts)?;
        self.check_ports(&raw_hosts, &hosts, &raw.settings)?;
        Ok(Inventory {
            path: self.path.to_owned(),
            ssh,
            hosts,
            settings,
        })
    }

    fn ssh(&self, raw: &RawSsh) -> Result<SshSettings, InventoryError> {
        let known_hosts = match &raw.known_hosts {
            Some(value) => self.relative_path(value, "ssh.known_hosts")?,
            None => self
                .path
                .parent()
                .unwrap_or_else(|| Path::new(""))
                .join("known_hosts"),
        };
        let connect_timeout = match &raw.connect_timeout_secs {
            Some(value) => {
                let field = "ssh.connect_timeout_secs";
                let seconds = self.number(value, field)?;
                match u64::try_from(seconds) {
                    Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
                    _ => {
                        return Err(self.error(
                            value.span(),
                            field,
                            "must be a positive number of seconds",
                        ))
                    }
                }
            }
            None => Duration::from_secs(10),
        };
        Ok(SshSettings {
            known_hosts,
            connect_timeout,
        })
    }

    fn settings(&self, raw: &Spanned<RawSettings>) -> Result<Settings, InventoryError> {
        let settings = raw.get_ref();
        let rust_log = match &settings.rust_log {
            Some(value) => self.non_empty(value, "settings.rust_log")?,
            None => "info".to_owned(),
        };
        let target_arch = match &settings.target_arch {
            Some(value) => {
                let name = self.non_empty(value, "settings.target_arch")?;
                Arch::from_name(&name).ok_or_else(|| {
                    self.error(
                        value.span(),
                        "settings.target_arch",
                        format!("unknown architecture `{name}` (x86_64 or aarch64)"),
                    )
                })?
            }
            None => Arch::X86_64,
        };
        let vhost = self.non_empty(&settings.vhost, "settings.vhost")?;
        let queue = self.non_empty(&settings.queue, "settings.queue")?;
        if queue.len() > 255 - ".dead-letter".len() {
            return Err(self.error(
                settings.queue.span(),
                "settings.queue",
                "queue name too long",
            ));
        }
        Ok(Settings {
            gateway_port: self.port(&settings.gateway_port, "settings.gateway_port")?,
            inventory_port: self.port(&settings.inventory_port, "settings.inventory_port")?,
            billing_health_port: self.port(
                &settings.billing_health_port,
                "settings.billing_health_port",
            )?,
            queue,
            vhost,
            rust_log,
            target_arch,
        })
    }

    fn host(&self, index: usize, raw: &RawHost, ssh: &SshSettings) -> Result<Host, InventoryError> {
        let field = |name: &str| format!("hosts[{index}].{name}");
        let name = self.non_empty(&raw.name, &field("name"))?;
        let valid_name = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with('.');
        if !valid_name {
            return Err(self.error(
                raw.name.span(),
                &field("name"),
                format!("`{name}` is not a valid host name (letters, digits, `-`, `_`, `.`)"),
            ));
        }
        let address = self.non_empty(&raw.address, &field("address"))?;
        let port = match &raw.port {
            Some(port) => self.port(port, &field("port"))?,
            None => 22,
        };
        let user = self.non_empty(&raw.user, &field("user"))?;
        let private_key = self.relative_path(&raw.private_key, &field("private_key"))?;
        self.key_pattern(&raw.private_key, &private_key, &field("private_key"))?;
        // Connecting as root needs no sudo; anyone else needs it to converge the host.
        let sudo = raw.sudo.as_ref().map_or(user != "root", |s| *s.get_ref());
        let mut roles = Vec::new();
        let roles_field = field("roles");
        if raw.roles.get_ref().is_empty() {
            return Err(self.error(
                raw.roles.span(),
                &roles_field,
                "a host needs at least one role",
            ));
        }
        for role in raw.roles.get_ref() {
            let name = self.interpolate(role, &roles_field)?;
            let parsed = parse_role(&name).ok_or_else(|| {
                self.error(
                    role.span(),
                    &roles_field,
                    format!(
                        "unknown role `{name}` (gateway, inventory, billing, postgres or rabbitmq)"
                    ),
                )
            })?;
            if roles.contains(&parsed) {
                return Err(self.error(
                    role.span(),
                    &roles_field,
                    format!("role `{name}` is listed twice"),
                ));
            }
            roles.push(parsed);
        }
        Ok(Host {
            name,
            connection: Connection {
                address,
                port,
                user,
                private_key,
                sudo,
                known_hosts: ssh.known_hosts.clone(),
                connect_timeout: ssh.connect_timeout,
            },
            roles,
            database_host: None,
        })
    }

    fn check_roles(
        &self,
        raw_hosts: &[Spanned<RawHost>],
        hosts: &[Host],
        hosts_span: Range<usize>,
    ) -> Result<(), InventoryError> {
        for role in [Role::Gateway, Role::Inventory, Role::Billing] {
            if !hosts.iter().any(|host| host.has(role)) {
                return Err(self.error(
                    hosts_span.clone(),
                    "hosts.roles",
                    format!("no host has the role `{}`", role.as_str()),
                ));
            }
        }
        let brokers: Vec<usize> = (0..hosts.len())
            .filter(|&index| hosts[index].has(Role::Rabbitmq))
            .collect();
        match brokers.as_slice() {
            [] => Err(self.error(
                hosts_span,
                "hosts.roles",
                "no host has the role `rabbitmq` (exactly one must)",
            )),
            [_] => Ok(()),
            [first, second, ..] => Err(self.error(
                raw_hosts[*second].get_ref().roles.span(),
                &format!("hosts[{second}].roles"),
                format!(
                    "`rabbitmq` is already on {} (exactly one host runs the broker)",
                    hosts[*first].name
                ),
            )),
        }
    }

    /// A service's database lives on the postgres host that also runs that service, else on the
    /// only postgres host.
    fn resolve_databases(
        &self,
        raw_hosts: &[Spanned<RawHost>],
        hosts: &mut [Host],
    ) -> Result<(), InventoryError> {
        let postgres: Vec<String> = hosts
            .iter()
            .filter(|host| host.has(Role::Postgres))
            .map(|host| host.name.clone())
            .collect();
        for (index, host) in hosts.iter_mut().enumerate() {
            if !host.has(Role::Inventory) && !host.has(Role::Billing) {
                continue;
            }
            let error = |message: String| {
                self.error(
                    raw_hosts[index].get_ref().roles.span(),
                    &format!("hosts[{index}].roles"),
                    message,
                )
            };
            host.database_host = Some(if host.has(Role::Postgres) {
                host.name.clone()
            } else {
                match postgres.as_slice() {
                    [only] => only.clone(),
                    [] => {
                        return Err(error(format!(
                            "{} needs a database but no host has the role `postgres`",
                            host.name
                        )))
                    }
                    several => {
                        return Err(error(format!(
                            "the database of {} is ambiguous: postgres runs on {}; add `postgres` to this host's roles or keep a single postgres host",
                            host.name,
                            several.join(", ")
                        )))
                    }
                }
            });
        }
        Ok(())
    }

    /// Two services of the same host cannot listen on the same port.
    fn check_ports(
        &self,
        raw_hosts: &[Spanned<RawHost>],
        hosts: &[Host],
        settings: &Spanned<RawSettings>,
    ) -> Result<(), InventoryError> {
        let raw = settings.get_ref();
        let ports = [
            (Role::Gateway, "settings.gateway_port", &raw.gateway_port),
            (
                Role::Inventory,
                "settings.inventory_port",
                &raw.inventory_port,
            ),
            (
                Role::Billing,
                "settings.billing_health_port",
                &raw.billing_health_port,
            ),
        ];
        for (index, host) in hosts.iter().enumerate() {
            let mut used: BTreeMap<u16, &str> = BTreeMap::new();
            for (role, field, value) in &ports {
                if !host.has(*role) {
                    continue;
                }
                let port = self.port(value, field)?;
                if let Some(other) = used.insert(port, field) {
                    return Err(self.error(
                        value.span(),
                        field,
                        format!(
                            "port {port} is also {other}, and both services run on {} (hosts[{index}] at line {})",
                            host.name,
                            line_column(self.text, raw_hosts[index].span().start).0
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn parse_role(name: &str) -> Option<Role> {
    match name {
        "gateway" => Some(Role::Gateway),
        "inventory" => Some(Role::Inventory),
        "billing" => Some(Role::Billing),
        "postgres" => Some(Role::Postgres),
        "rabbitmq" => Some(Role::Rabbitmq),
        _ => None,
    }
}

/// Whether `address` is an IP literal (PostgreSQL and RabbitMQ need one to bind to).
pub fn is_ip_address(address: &str) -> bool {
    address.parse::<IpAddr>().is_ok()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A syntax or type error from the TOML parser, located and with the field it concerns.
fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> InventoryError {
    let offset = error.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    InventoryError::Invalid {
        file: path.to_owned(),
        line,
        column,
        field: field_at(text, offset, error.message()),
        message: error.message().trim().to_owned(),
    }
}

/// The dotted path of the field at `offset`: the table header above it (`hosts[1]`, `settings`)
/// and the key on its line, or the field a "missing field" message names.
fn field_at(text: &str, offset: usize, message: &str) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut host_index: Option<usize> = None;
    for line in text[..offset].split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with("[[") {
            let name = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
            if name == "hosts" {
                host_index = Some(host_index.map_or(0, |i| i + 1));
                table = format!("hosts[{}]", host_index.unwrap_or(0));
            } else {
                table = name.to_owned();
            }
        } else if trimmed.starts_with('[') {
            table = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        }
    }
    let current_start = text[..offset].rfind('\n').map_or(0, |at| at + 1);
    let current_line = text[current_start..].lines().next().unwrap_or("");
    let key = match current_line.split_once('=') {
        Some((key, _)) if !current_line.trim_start().starts_with('[') => {
            Some(key.trim().trim_matches('"').to_owned())
        }
        _ => None,
    };
    let key = key.or_else(|| {
        let start = message.find('`')? + 1;
        let end = start + message[start..].find('`')?;
        Some(message[start..end].to_owned())
    });
    match (table.is_empty(), key) {
        (true, Some(key)) => key,
        (false, Some(key)) => format!("{table}.{key}"),
        (_, None) if !table.is_empty() => table,
        _ => "(top level)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "\
INVENTORY_DB_NAME=movies_db
INVENTORY_DB_USER=inventory_user
INVENTORY_DB_PASSWORD=inventory_password
BILLING_DB_NAME=billing_db
BILLING_DB_USER=billing_user
BILLING_DB_PASSWORD=billing_password
RABBITMQ_USER=rabbitmq_user
RABBITMQ_PASSWORD=rabbitmq_password
RABBITMQ_VHOST=billing_vhost
RABBITMQ_QUEUE=billing_queue
INVENTORY_API_PORT=8080
GATEWAY_VM_IP=192.168.56.10
INVENTORY_VM_IP=192.168.56.11
BILLING_VM_IP=192.168.56.12
";

    const GOOD: &str = r#"[ssh]
known_hosts = "known_hosts"
connect_timeout_secs = 10

[[hosts]]
name = "gateway-vm"
address = "${GATEWAY_VM_IP}"
port = 22
user = "vagrant"
private_key = ".vagrant/machines/gateway-vm/virtualbox/private_key"
sudo = true
roles = ["gateway"]

[[hosts]]
name = "inventory-vm"
address = "${INVENTORY_VM_IP}"
port = "22"
user = "vagrant"
private_key = ".vagrant/machines/inventory-vm/virtualbox/private_key"
sudo = true
roles = ["inventory", "postgres"]

[[hosts]]
name = "billing-vm"
address = "${BILLING_VM_IP}"
user = "vagrant"
private_key = ".vagrant/machines/billing-vm/virtualbox/private_key"
roles = ["billing", "postgres", "rabbitmq"]

[settings]
gateway_port = 8080
inventory_port = "${INVENTORY_API_PORT}"
billing_health_port = 8081
queue = "${RABBITMQ_QUEUE}"
vhost = "${RABBITMQ_VHOST}"
"#;

    fn env() -> EnvFile {
        EnvFile::parse(Path::new(".env"), ENV).expect("test env parses")
    }

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(Path::new("/srv/deploy/inventory.toml"), text, &env())
    }

    /// Line (1-based) of the first line of `text` containing `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|line| line.contains(needle))
            .expect("needle present")
            + 1
    }

    #[track_caller]
    fn assert_error(text: &str, line: usize, field: &str, words: &str) {
        let message = parse(text).expect_err("must be refused").to_string();
        assert!(message.contains("/srv/deploy/inventory.toml"), "{message}");
        assert!(message.contains(&format!("line {line},")), "{message}");
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains(words), "{message}");
    }

    #[test]
    fn the_default_inventory_validates() {
        let inventory = parse(GOOD).expect("valid");
        assert_eq!(inventory.hosts.len(), 3);
        let gateway = &inventory.hosts[0];
        assert_eq!(gateway.connection.address, "192.168.56.10");
        assert_eq!(
            gateway.connection.private_key,
            Path::new("/srv/deploy/.vagrant/machines/gateway-vm/virtualbox/private_key")
        );
        assert_eq!(gateway.database_host, None);
        assert_eq!(inventory.hosts[1].connection.port, 22);
        assert!(
            inventory.hosts[2].connection.sudo,
            "sudo defaults to true for non-root"
        );
        assert_eq!(
            inventory.hosts[1].database_host.as_deref(),
            Some("inventory-vm")
        );
        assert_eq!(
            inventory.hosts[2].database_host.as_deref(),
            Some("billing-vm")
        );
        assert_eq!(inventory.broker_host().name, "billing-vm");
        assert_eq!(inventory.settings.inventory_port, 8080);
        assert_eq!(inventory.settings.vhost, "billing_vhost");
        assert_eq!(inventory.settings.target_arch, Arch::X86_64);
        assert_eq!(
            inventory.ssh.known_hosts,
            Path::new("/srv/deploy/known_hosts")
        );
        assert_eq!(inventory.ssh.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_syntax_error_is_located() {
        let text = GOOD.replace("port = 22\n", "port = = 22\n");
        assert_error(&text, line_of(GOOD, "port = 22"), "hosts[0].port", "");
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let text = GOOD.replace(
            "sudo = true\nroles = [\"inventory\"",
            "sudo = \"yes\"\nroles = [\"inventory\"",
        );
        assert_ne!(text, GOOD);
        assert_error(
            &text,
            line_of(&text, "sudo = \"yes\""),
            "hosts[1].sudo",
            "invalid type",
        );
    }

    #[test]
    fn an_unknown_field_is_named() {
        let text = GOOD.replace(
            "user = \"vagrant\"\nprivate_key = \".vagrant/machines/billing",
            "usr = \"vagrant\"\nprivate_key = \".vagrant/machines/billing",
        );
        assert_ne!(text, GOOD);
        assert_error(
            &text,
            line_of(&text, "usr = "),
            "hosts[2].usr",
            "unknown field",
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = GOOD.replace("queue = \"${RABBITMQ_QUEUE}\"\n", "");
        let message = parse(&text).expect_err("missing queue").to_string();
        assert!(message.contains("inventory.toml"), "{message}");
        assert!(
            message.contains(&format!("line {},", line_of(&text, "[settings]"))),
            "{message}"
        );
        assert!(message.contains("queue"), "{message}");
    }

    #[test]
    fn an_unknown_variable_is_named_with_its_field() {
        let text = GOOD.replace("${BILLING_VM_IP}", "${BILLING_IP}");
        let message = parse(&text).expect_err("unknown var").to_string();
        assert!(message.contains("BILLING_IP"), "{message}");
        assert!(message.contains(".env"), "{message}");
        assert_error(
            &text,
            line_of(&text, "${BILLING_IP}"),
            "hosts[2].address",
            "BILLING_IP",
        );
    }

    #[test]
    fn a_password_cannot_be_interpolated() {
        let text = GOOD.replace("\"${RABBITMQ_VHOST}\"", "\"${RABBITMQ_PASSWORD}\"");
        assert_error(
            &text,
            line_of(&text, "vhost ="),
            "settings.vhost",
            "password",
        );
    }

    #[test]
    fn a_port_from_a_variable_must_be_a_number() {
        let text = GOOD.replace("\"${INVENTORY_API_PORT}\"", "\"${RABBITMQ_USER}\"");
        assert_error(
            &text,
            line_of(&text, "inventory_port ="),
            "settings.inventory_port",
            "not a number",
        );
        let text = GOOD.replace("billing_health_port = 8081", "billing_health_port = 70000");
        assert_error(
            &text,
            line_of(&text, "billing_health_port"),
            "settings.billing_health_port",
            "70000",
        );
    }

    #[test]
    fn host_names_are_unique() {
        let text = GOOD.replace("name = \"billing-vm\"", "name = \"gateway-vm\"");
        assert_error(
            &text,
            line_of(GOOD, "name = \"billing-vm\""),
            "hosts[2].name",
            "already used",
        );
    }

    #[test]
    fn roles_must_be_known() {
        let text = GOOD.replace("[\"gateway\"]", "[\"gateway\", \"redis\"]");
        assert_error(
            &text,
            line_of(&text, "\"redis\""),
            "hosts[0].roles",
            "unknown role `redis`",
        );
    }

    #[test]
    fn every_service_role_needs_a_host() {
        let text = GOOD.replace("[\"gateway\"]", "[\"postgres\"]");
        assert_error(
            &text,
            line_of(&text, "[[hosts]]"),
            "hosts.roles",
            "`gateway`",
        );
    }

    #[test]
    fn exactly_one_broker() {
        let text = GOOD.replace("[\"gateway\"]", "[\"gateway\", \"rabbitmq\"]");
        assert_error(
            &text,
            line_of(GOOD, "[\"billing\", \"postgres\", \"rabbitmq\"]"),
            "hosts[2].roles",
            "exactly one",
        );
        let text = GOOD.replace(", \"rabbitmq\"]", "]");
        assert_error(
            &text,
            line_of(&text, "[[hosts]]"),
            "hosts.roles",
            "rabbitmq",
        );
    }

    #[test]
    fn an_ambiguous_database_names_the_host_and_field() {
        // billing moves to the gateway host, which has no postgres: two postgres hosts remain.
        let text = GOOD
            .replace("[\"gateway\"]", "[\"gateway\", \"billing\"]")
            .replace(
                "[\"billing\", \"postgres\", \"rabbitmq\"]",
                "[\"postgres\", \"rabbitmq\"]",
            );
        assert_error(
            &text,
            line_of(&text, "[\"gateway\", \"billing\"]"),
            "hosts[0].roles",
            "ambiguous",
        );
    }

    #[test]
    fn a_single_postgres_host_serves_remote_services() {
        let text = GOOD.replace("[\"inventory\", \"postgres\"]", "[\"inventory\"]");
        let inventory = parse(&text).expect("valid");
        assert_eq!(
            inventory.hosts[1].database_host.as_deref(),
            Some("billing-vm")
        );
    }

    #[test]
    fn colliding_ports_on_one_host_are_refused() {
        let text = GOOD.replace(
            "[\"gateway\"]",
            "[\"gateway\", \"inventory\", \"postgres\"]",
        );
        assert_error(
            &text,
            line_of(&text, "inventory_port ="),
            "settings.inventory_port",
            "port 8080",
        );
    }

    #[test]
    fn the_private_key_resolves_against_the_inventory_folder() {
        let text = GOOD.replace(
            ".vagrant/machines/gateway-vm/virtualbox/private_key",
            "/home/me/.ssh/id_ed25519",
        );
        let inventory = parse(&text).expect("valid");
        assert_eq!(
            inventory.hosts[0].connection.private_key,
            Path::new("/home/me/.ssh/id_ed25519")
        );
    }

    #[test]
    fn a_key_path_may_choose_one_folder_when_connecting() {
        let text = GOOD.replace("/virtualbox/", "/*/");
        let inventory = parse(&text).expect("valid");
        assert!(inventory.hosts[0]
            .connection
            .private_key
            .ends_with(".vagrant/machines/gateway-vm/*/private_key"));

        for bad in [
            ".vagrant/machines/gateway-vm/virtual*/private_key",
            ".vagrant/machines/gateway-vm/*/*/private_key",
            ".vagrant/machines/gateway-vm/*",
        ] {
            let text = GOOD.replace(".vagrant/machines/gateway-vm/virtualbox/private_key", bad);
            assert_error(&text, line_of(&text, bad), "hosts[0].private_key", "`*`");
        }
    }

    #[test]
    fn an_unclosed_interpolation_is_refused() {
        let text = GOOD.replace("\"${GATEWAY_VM_IP}\"", "\"${GATEWAY_VM_IP\"");
        assert_error(
            &text,
            line_of(&text, "${GATEWAY_VM_IP"),
            "hosts[0].address",
            "closing",
        );
    }

    #[test]
    fn other_bad_values_are_located() {
        let cases = [
            (
                "[\"gateway\"]",
                "[\"gateway\", \"gateway\"]",
                "hosts[0].roles",
                "listed twice",
            ),
            ("[\"gateway\"]", "[]", "hosts[0].roles", "at least one role"),
            (
                "name = \"gateway-vm\"",
                "name = \"gateway vm\"",
                "hosts[0].name",
                "not a valid host name",
            ),
            (
                "user = \"vagrant\"",
                "user = \"\"",
                "hosts[0].user",
                "empty",
            ),
            (
                "connect_timeout_secs = 10",
                "connect_timeout_secs = 0",
                "ssh.connect_timeout_secs",
                "positive",
            ),
            (
                "billing_health_port = 8081",
                "billing_health_port = 8081\ntarget_arch = \"sparc\"",
                "settings.target_arch",
                "sparc",
            ),
        ];
        for (from, to, field, words) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let needle = to.lines().last().unwrap_or(to);
            assert_error(&text, line_of(&text, needle), field, words);
        }
    }

    #[test]
    fn an_unreadable_inventory_is_named() {
        let message = Inventory::load(Path::new("/nonexistent/inventory.toml"), &env())
            .expect_err("missing")
            .to_string();
        assert!(message.contains("/nonexistent/inventory.toml"), "{message}");
    }
}
