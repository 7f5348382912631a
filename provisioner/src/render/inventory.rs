//! `inventory.toml`: a raw serde model that keeps every value's position, then validation into
//! a typed [`Inventory`] whose every error names the file, the line, the column and the field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::located::{line_column, syntax_error, Located};
use super::platform::{Component, Platform, ServiceDescription, FIXED_SETTINGS};
use crate::desired::{Arch, Connection};
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
    #[error(transparent)]
    Invalid(#[from] Located),
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
    /// The services the roles name.
    pub platform: Platform,
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
    /// The services it runs (names of the platform description), in the file's order.
    pub services: Vec<String>,
    /// The infrastructure components it runs, in the file's order.
    pub components: Vec<Component>,
    /// Name of the host whose PostgreSQL holds the databases of the services running here;
    /// `Some` exactly when this host runs a service that owns a database, and the databases do
    /// not live in a Patroni cluster.
    pub database_host: Option<String>,
}

impl Host {
    /// Whether it runs the service named `service`.
    pub fn runs(&self, service: &str) -> bool {
        self.services.iter().any(|name| name == service)
    }

    pub fn has(&self, component: Component) -> bool {
        self.components.contains(&component)
    }

    /// Its roles as the inventory names them: services, then components.
    pub fn role_names(&self) -> Vec<String> {
        self.services
            .iter()
            .cloned()
            .chain(self.components.iter().map(|c| c.name().to_owned()))
            .collect()
    }

    /// The address other hosts use to reach this one (the SSH address).
    pub fn address(&self) -> &str {
        &self.connection.address
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Each service's port, by the setting the platform description names for it
    /// (`gateway_port`, `inventory_port`, …).
    pub ports: BTreeMap<String, u16>,
    pub queue: String,
    pub vhost: String,
    /// `RUST_LOG` of every service; `info` unless set.
    pub rust_log: String,
    /// `LOG_FORMAT` of every service (`text` or `json`); the services' default unless set.
    pub log_format: Option<String>,
    /// Architecture of every host; `x86_64` unless set.
    pub target_arch: Arch,
    /// The one address of the public services, moved between their hosts by keepalived.
    pub vip: Option<Vip>,
    /// The gateway's per-client limit of API requests (`RATE_LIMIT_PER_SECOND`); none unless set.
    pub rate_limit_per_second: Option<u32>,
    /// Its burst (`RATE_LIMIT_BURST`); one second's worth unless set.
    pub rate_limit_burst: Option<u32>,
}

/// A virtual IPv4 address held by one host of the public services at a time (VRRP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: std::net::Ipv4Addr,
    /// The network interface it is added to, on every host that may hold it.
    pub interface: String,
}

impl Inventory {
    /// Reads and validates `path` against the services of `platform`, interpolating `${VAR}`
    /// from `env`.
    pub fn load(path: &Path, env: &EnvFile, platform: &Platform) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, env, platform)
    }

    /// Validates `text` as if read from `path` (whose folder anchors relative paths).
    pub fn parse(
        path: &Path,
        text: &str,
        env: &EnvFile,
        platform: &Platform,
    ) -> Result<Self, InventoryError> {
        let raw: RawInventory =
            toml::from_str(text).map_err(|error| syntax_error(path, text, &error))?;
        Validator {
            path,
            text,
            env,
            platform,
        }
        .validate(raw)
    }

    /// The port `service` listens on.
    pub fn port_of(&self, service: &ServiceDescription) -> u16 {
        // Validation required every service's port setting.
        self.settings
            .ports
            .get(&service.port_setting)
            .copied()
            .unwrap_or_default()
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// Hosts running `service`, in file order.
    pub fn hosts_running<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Host> {
        self.hosts.iter().filter(move |host| host.runs(service))
    }

    /// Hosts running `component`, in file order.
    pub fn hosts_with(&self, component: Component) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |host| host.has(component))
    }

    /// Hosts running a service for which `wanted` holds, in file order.
    pub fn hosts_running_any<'a>(
        &'a self,
        wanted: impl Fn(&ServiceDescription) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Host> {
        self.hosts.iter().filter(move |host| {
            host.services
                .iter()
                .filter_map(|name| self.platform.service(name))
                .any(&wanted)
        })
    }

    /// The services of the description `host` runs, in start order.
    pub fn services_of<'a>(
        &'a self,
        host: &'a Host,
    ) -> impl Iterator<Item = &'a ServiceDescription> {
        self.platform
            .services()
            .iter()
            .filter(move |service| host.runs(&service.name))
    }

    /// The hosts running RabbitMQ, in file order: one, or the nodes of a cluster (validation
    /// guarantees an odd number when a service uses the broker).
    pub fn broker_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Component::Rabbitmq).collect()
    }

    /// Whether RabbitMQ runs as a cluster of several nodes.
    pub fn broker_cluster(&self) -> bool {
        self.hosts_with(Component::Rabbitmq).nth(1).is_some()
    }

    /// The members of the Patroni cluster, in file order: when there are any, every service's
    /// database lives in it (validation refuses `postgres` hosts beside them).
    pub fn patroni_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Component::Patroni).collect()
    }

    /// The members of the etcd cluster that Patroni keeps its leader lock in, in file order.
    pub fn etcd_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Component::Etcd).collect()
    }

    /// The host running Prometheus, when the platform is monitored.
    pub fn monitoring_host(&self) -> Option<&Host> {
        self.hosts_with(Component::Monitoring).next()
    }

    /// Whether the databases live in a Patroni cluster, reached through HAProxy on each host
    /// whose services own one.
    pub fn database_cluster(&self) -> bool {
        self.hosts_with(Component::Patroni).next().is_some()
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

/// `[settings]`: the fixed keys and each service's port setting, checked by the validator since
/// which keys exist depends on the platform description.
type RawSettings = BTreeMap<String, Spanned<RawValue>>;

/// A setting's value as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawValue {
    Integer(i64),
    Text(String),
    Other(toml::Value),
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
    platform: &'a Platform,
}

impl Validator<'_> {
    fn error(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> InventoryError {
        Located::at(self.path, self.text, span, field, message).into()
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
        self.check_vip(&raw_hosts, &hosts, &settings, &raw.settings)?;
        Ok(Inventory {
            path: self.path.to_owned(),
            ssh,
            hosts,
            settings,
            platform: self.platform.clone(),
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

    /// `[settings]`: the fixed keys and one port per service of the platform description.
    fn settings(&self, raw: &Spanned<RawSettings>) -> Result<Settings, InventoryError> {
        let table = raw.get_ref();
        let port_settings: Vec<&str> = self
            .platform
            .services()
            .iter()
            .map(|service| service.port_setting.as_str())
            .collect();
        for (key, value) in table {
            if !FIXED_SETTINGS.contains(&key.as_str()) && !port_settings.contains(&key.as_str()) {
                let mut expected: Vec<&str> = port_settings.clone();
                expected.extend(FIXED_SETTINGS);
                return Err(self.error(
                    value.span(),
                    &format!("settings.{key}"),
                    format!(
                        "unknown field `{key}`, expected one of {} (the ports are those of {})",
                        expected.join(", "),
                        self.platform.path.display()
                    ),
                ));
            }
        }
        let missing = |key: &str| {
            self.error(
                raw.span(),
                &format!("settings.{key}"),
                format!("missing field `{key}`"),
            )
        };
        let text = |key: &str| -> Result<Option<String>, InventoryError> {
            let Some(value) = table.get(key) else {
                return Ok(None);
            };
            let field = format!("settings.{key}");
            match value.get_ref() {
                RawValue::Text(text) => self
                    .non_empty(&Spanned::new(value.span(), text.clone()), &field)
                    .map(Some),
                _ => Err(self.error(value.span(), &field, "must be a string")),
            }
        };
        let rust_log = text("rust_log")?.unwrap_or_else(|| "info".to_owned());
        let log_format = text("log_format")?;
        if let Some(format) = &log_format {
            if !matches!(format.as_str(), "text" | "json") {
                return Err(self.error(
                    table["log_format"].span(),
                    "settings.log_format",
                    format!("`{format}` is not a log format (`text` or `json`)"),
                ));
            }
        }
        let target_arch = match text("target_arch")? {
            Some(name) => Arch::from_name(&name).ok_or_else(|| {
                self.error(
                    table["target_arch"].span(),
                    "settings.target_arch",
                    format!("unknown architecture `{name}` (x86_64 or aarch64)"),
                )
            })?,
            None => Arch::X86_64,
        };
        let queue = text("queue")?.ok_or_else(|| missing("queue"))?;
        let vhost = text("vhost")?.ok_or_else(|| missing("vhost"))?;
        // The rules the gateway and billing apply to the same name.
        let queue = service_common::queue_name(&queue)
            .map_err(|message| self.error(table["queue"].span(), "settings.queue", message))?;
        let mut ports = BTreeMap::new();
        for key in port_settings {
            let value = table.get(key).ok_or_else(|| missing(key))?;
            ports.insert(
                key.to_owned(),
                self.port(&setting_number(value), &format!("settings.{key}"))?,
            );
        }
        let vip = match (text("vip")?, text("vip_interface")?) {
            (None, None) => None,
            (Some(address), interface) => {
                let address = address.parse::<std::net::Ipv4Addr>().map_err(|_| {
                    self.error(
                        table["vip"].span(),
                        "settings.vip",
                        format!("`{address}` is not an IPv4 address"),
                    )
                })?;
                let interface = interface.ok_or_else(|| missing("vip_interface"))?;
                // Linux's limit, and nothing that could break out of keepalived.conf.
                if interface.len() > 15
                    || !interface
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(self.error(
                        table["vip_interface"].span(),
                        "settings.vip_interface",
                        format!("`{interface}` is not a network interface name"),
                    ));
                }
                Some(Vip { address, interface })
            }
            (None, Some(_)) => {
                return Err(self.error(
                    table["vip_interface"].span(),
                    "settings.vip_interface",
                    "is set without `vip`, the address it would carry",
                ))
            }
        };
        let positive = |key: &str| -> Result<Option<u32>, InventoryError> {
            let Some(value) = table.get(key) else {
                return Ok(None);
            };
            let field = format!("settings.{key}");
            let value = setting_number(value);
            let number = self.number(&value, &field)?;
            u32::try_from(number)
                .ok()
                .filter(|number| *number > 0)
                .map(Some)
                .ok_or_else(|| {
                    self.error(
                        value.span(),
                        &field,
                        format!("{number} is not a number of requests (1 or more)"),
                    )
                })
        };
        let rate_limit_per_second = positive("rate_limit_per_second")?;
        let rate_limit_burst = positive("rate_limit_burst")?;
        if rate_limit_burst.is_some() && rate_limit_per_second.is_none() {
            return Err(self.error(
                table["rate_limit_burst"].span(),
                "settings.rate_limit_burst",
                "is set without `rate_limit_per_second`, the rate it would be a burst of",
            ));
        }
        Ok(Settings {
            ports,
            queue,
            vhost,
            rust_log,
            log_format,
            target_arch,
            vip,
            rate_limit_per_second,
            rate_limit_burst,
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
        let roles_field = field("roles");
        if raw.roles.get_ref().is_empty() {
            return Err(self.error(
                raw.roles.span(),
                &roles_field,
                "a host needs at least one role",
            ));
        }
        let mut services = Vec::new();
        let mut components = Vec::new();
        for role in raw.roles.get_ref() {
            let name = self.interpolate(role, &roles_field)?;
            let twice = || {
                self.error(
                    role.span(),
                    &roles_field,
                    format!("role `{name}` is listed twice"),
                )
            };
            if let Some(service) = self.platform.service(&name) {
                if services.contains(&service.name) {
                    return Err(twice());
                }
                services.push(service.name.clone());
            } else if let Some(component) = Component::from_name(&name) {
                if components.contains(&component) {
                    return Err(twice());
                }
                components.push(component);
            } else {
                return Err(self.error(
                    role.span(),
                    &roles_field,
                    format!(
                        "unknown role `{name}` ({})",
                        self.platform.role_names().join(", ")
                    ),
                ));
            }
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
            services,
            components,
            database_host: None,
        })
    }

    /// Every service of the description runs somewhere; the broker runs on one host, or on an
    /// odd number of hosts (a cluster), when a service uses it.
    fn check_roles(
        &self,
        raw_hosts: &[Spanned<RawHost>],
        hosts: &[Host],
        hosts_span: Range<usize>,
    ) -> Result<(), InventoryError> {
        for service in self.platform.services() {
            if !hosts.iter().any(|host| host.runs(&service.name)) {
                return Err(self.error(
                    hosts_span.clone(),
                    "hosts.roles",
                    format!("no host has the role `{}`", service.name),
                ));
            }
        }
        let brokers: Vec<usize> = (0..hosts.len())
            .filter(|&index| hosts[index].has(Component::Rabbitmq))
            .collect();
        match brokers.as_slice() {
            [] if self.platform.uses_broker() => Err(self.error(
                hosts_span.clone(),
                "hosts.roles",
                "no host has the role `rabbitmq` (one host, or a cluster of 3 or more)",
            )),
            // A cluster keeps its quorum queues while a majority of its nodes is up: with an
            // even number, losing half stops them as surely as losing one more would.
            several if several.len() % 2 == 0 => {
                let last = *several.last().unwrap_or(&0);
                Err(self.error(
                    raw_hosts[last].get_ref().roles.span(),
                    &format!("hosts[{last}].roles"),
                    format!(
                        "`rabbitmq` is on {} hosts; a cluster needs an odd number (1, 3, 5…): its queues stop without a majority of its nodes, so an even number survives no more losses than one node fewer",
                        several.len()
                    ),
                ))
            }
            _ => Ok(()),
        }?;
        self.check_database_cluster(raw_hosts, hosts, hosts_span)?;
        let monitoring: Vec<usize> = (0..hosts.len())
            .filter(|&index| hosts[index].has(Component::Monitoring))
            .collect();
        match monitoring.as_slice() {
            [_, second, ..] => Err(self.error(
                raw_hosts[*second].get_ref().roles.span(),
                &format!("hosts[{second}].roles"),
                "`monitoring` is on more than one host: one Prometheus scrapes the whole platform",
            )),
            _ => Ok(()),
        }
    }

    /// A Patroni cluster has 2 or more members and an etcd of 3, 5… members; etcd serves only
    /// Patroni; the databases live either on `postgres` hosts or in the cluster, never both.
    fn check_database_cluster(
        &self,
        raw_hosts: &[Spanned<RawHost>],
        hosts: &[Host],
        hosts_span: Range<usize>,
    ) -> Result<(), InventoryError> {
        let with = |component| -> Vec<usize> {
            (0..hosts.len())
                .filter(|&index| hosts[index].has(component))
                .collect()
        };
        let (patroni, etcd, postgres) = (
            with(Component::Patroni),
            with(Component::Etcd),
            with(Component::Postgres),
        );
        let at = |index: usize, message: String| {
            self.error(
                raw_hosts[index].get_ref().roles.span(),
                &format!("hosts[{index}].roles"),
                message,
            )
        };
        if let (Some(&first), false) = (postgres.first(), patroni.is_empty()) {
            return Err(at(
                first,
                "`postgres` beside `patroni` hosts: the databases live either on `postgres` hosts (one PostgreSQL each) or in the Patroni cluster, not both".to_owned(),
            ));
        }
        if patroni.is_empty() {
            return match etcd.first() {
                Some(&first) => Err(at(
                    first,
                    "`etcd` holds the leader lock of a Patroni cluster, and no host has the role `patroni`".to_owned(),
                )),
                None => Ok(()),
            };
        }
        if patroni.len() < 2 {
            return Err(at(
                patroni[0],
                "`patroni` is on 1 host; a Patroni cluster needs 2 or more members, so that a replica can take over".to_owned(),
            ));
        }
        match etcd.as_slice() {
            [] => Err(self.error(
                hosts_span,
                "hosts.roles",
                "the Patroni cluster needs an etcd cluster: give 3 hosts (or 5…) the role `etcd`",
            )),
            several if several.len() < 3 || several.len() % 2 == 0 => {
                let last = *several.last().unwrap_or(&0);
                Err(at(
                    last,
                    format!(
                        "`etcd` is on {} host(s); it needs an odd number, 3 or more: Patroni keeps its leader lock only while a majority of etcd answers, so 1 member is a single point of failure and an even number survives no more losses than one member fewer",
                        several.len()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The hosts that may hold the VIP (those of the public services) send VRRP to each other's
    /// address: each must be an IPv4 address, none the VIP itself.
    fn check_vip(
        &self,
        raw_hosts: &[Spanned<RawHost>],
        hosts: &[Host],
        settings: &Settings,
        raw_settings: &Spanned<RawSettings>,
    ) -> Result<(), InventoryError> {
        let Some(vip) = &settings.vip else {
            return Ok(());
        };
        let public: Vec<usize> = (0..hosts.len())
            .filter(|&index| {
                hosts[index]
                    .services
                    .iter()
                    .any(|name| self.platform.service(name).is_some_and(|s| s.public))
            })
            .collect();
        if public.is_empty() {
            return Err(self.error(
                raw_settings.get_ref()["vip"].span(),
                "settings.vip",
                "no host runs a public service to hold it",
            ));
        }
        for index in public {
            let address = hosts[index].address();
            let field = format!("hosts[{index}].address");
            let span = raw_hosts[index].get_ref().address.span();
            match address.parse::<std::net::Ipv4Addr>() {
                Ok(ip) if ip == vip.address => {
                    return Err(self.error(span, &field, "is the VIP itself"))
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(self.error(
                        span,
                        &field,
                        format!(
                            "`{address}` must be an IPv4 address: {} may hold the VIP, and keepalived speaks VRRP to each such host's address",
                            hosts[index].name
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// A service's database lives on the postgres host of the same host; else on the postgres
    /// host where that service also runs (a second billing host uses the first one's); else on
    /// the only postgres host.
    fn resolve_databases(
        &self,
        raw_hosts: &[Spanned<RawHost>],
        hosts: &mut [Host],
    ) -> Result<(), InventoryError> {
        let postgres: Vec<(String, Vec<String>)> = hosts
            .iter()
            .filter(|host| host.has(Component::Postgres))
            .map(|host| (host.name.clone(), host.services.clone()))
            .collect();
        let cluster = hosts.iter().any(|host| host.has(Component::Patroni));
        for (index, host) in hosts.iter_mut().enumerate() {
            let with_database: Vec<&String> = host
                .services
                .iter()
                .filter(|name| {
                    self.platform
                        .service(name)
                        .is_some_and(|service| service.database.is_some())
                })
                .collect();
            if with_database.is_empty() {
                continue;
            }
            let error = |message: String| {
                self.error(
                    raw_hosts[index].get_ref().roles.span(),
                    &format!("hosts[{index}].roles"),
                    message,
                )
            };
            // Reached through HAProxy on this host, wherever the primary is.
            if cluster {
                continue;
            }
            if host.has(Component::Postgres) {
                host.database_host = Some(host.name.clone());
                continue;
            }
            let homes: Vec<&String> = postgres
                .iter()
                .filter(|(_, services)| services.iter().any(|s| with_database.contains(&s)))
                .map(|(name, _)| name)
                .collect();
            let candidates: Vec<&String> = if homes.is_empty() {
                postgres.iter().map(|(name, _)| name).collect()
            } else {
                homes
            };
            host.database_host = Some(match candidates.as_slice() {
                [only] => (*only).clone(),
                [] => {
                    return Err(error(format!(
                        "{} needs a database but no host has the role `postgres`",
                        host.name
                    )))
                }
                several => {
                    return Err(error(format!(
                        "the database of {} is ambiguous: postgres runs on {}; add `postgres` to this host's roles, or run its services on the postgres host that holds their database too",
                        host.name,
                        several.iter().map(|name| name.as_str()).collect::<Vec<_>>().join(", ")
                    )))
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
        let table = settings.get_ref();
        for (index, host) in hosts.iter().enumerate() {
            let mut used: BTreeMap<u16, String> = BTreeMap::new();
            // In the file's order, so the setting written second is the one named.
            let mut settings: Vec<(&str, &Spanned<RawValue>)> = host
                .services
                .iter()
                .filter_map(|name| self.platform.service(name))
                .filter_map(|service| {
                    let key = service.port_setting.as_str();
                    table.get(key).map(|value| (key, value))
                })
                .collect();
            settings.sort_by_key(|(_, value)| value.span().start);
            for (key, value) in settings {
                let field = format!("settings.{key}");
                let port = self.port(&setting_number(value), &field)?;
                if let Some(other) = used.insert(port, field.clone()) {
                    return Err(self.error(
                        value.span(),
                        &field,
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

/// A setting read as a number: written as one, or as a string (so it can come from `${VAR}`).
fn setting_number(value: &Spanned<RawValue>) -> Spanned<RawNumber> {
    let number = match value.get_ref() {
        RawValue::Integer(number) => RawNumber::Integer(*number),
        RawValue::Text(text) => RawNumber::Text(text.clone()),
        RawValue::Other(other) => RawNumber::Text(other.to_string()),
    };
    Spanned::new(value.span(), number)
}

/// Whether `address` is an IP literal (PostgreSQL and RabbitMQ need one to bind to).
pub fn is_ip_address(address: &str) -> bool {
    address.parse::<IpAddr>().is_ok()
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

    fn platform() -> Platform {
        Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../platform.toml"))
            .expect("platform.toml is valid")
    }

    fn env() -> EnvFile {
        EnvFile::parse(Path::new(".env"), ENV, &platform().required_variables())
            .expect("test env parses")
    }

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(
            Path::new("/srv/deploy/inventory.toml"),
            text,
            &env(),
            &platform(),
        )
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
        let brokers: Vec<&str> = inventory
            .broker_hosts()
            .iter()
            .map(|host| host.name.as_str())
            .collect();
        assert_eq!(brokers, ["billing-vm"]);
        assert_eq!(inventory.settings.ports["inventory_port"], 8080);
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
    fn one_broker_or_an_odd_cluster() {
        let text = GOOD.replace("[\"gateway\"]", "[\"gateway\", \"rabbitmq\"]");
        assert_error(
            &text,
            line_of(GOOD, "[\"billing\", \"postgres\", \"rabbitmq\"]"),
            "hosts[2].roles",
            "an odd number",
        );
        let text = GOOD.replace(", \"rabbitmq\"]", "]");
        assert_error(
            &text,
            line_of(&text, "[[hosts]]"),
            "hosts.roles",
            "rabbitmq",
        );
        let three = GOOD
            .replace("[\"gateway\"]", "[\"gateway\", \"rabbitmq\"]")
            .replace(
                "[\"inventory\", \"postgres\"]",
                "[\"inventory\", \"postgres\", \"rabbitmq\"]",
            );
        let inventory = parse(&three).expect("a cluster of three");
        assert!(inventory.broker_cluster());
        assert_eq!(inventory.broker_hosts().len(), 3);
        assert!(!parse(GOOD).expect("valid").broker_cluster());
    }

    /// `GOOD` with one more host of `roles`.
    fn with_host(name: &str, roles: &str) -> String {
        GOOD.replace(
            "\n[settings]",
            &format!(
                "\n[[hosts]]\nname = \"{name}\"\naddress = \"10.0.0.9\"\nuser = \"vagrant\"\nprivate_key = \"key\"\nroles = {roles}\n\n[settings]"
            ),
        )
    }

    #[test]
    fn a_second_host_of_a_service_uses_the_database_where_that_service_runs_with_postgres() {
        let inventory = parse(&with_host("billing2-vm", "[\"billing\"]")).expect("valid");
        let second = &inventory.hosts[3];
        assert_eq!(second.database_host.as_deref(), Some("billing-vm"));
        let inventory = parse(&with_host("inventory2-vm", "[\"inventory\"]")).expect("valid");
        assert_eq!(
            inventory.hosts[3].database_host.as_deref(),
            Some("inventory-vm")
        );
        // Both services on one host without postgres: their databases live on two hosts.
        let text = with_host("both-vm", "[\"inventory\", \"billing\"]");
        assert_error(
            &text,
            line_of(&text, "[\"inventory\", \"billing\"]"),
            "hosts[3].roles",
            "ambiguous",
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
                "queue = \"${RABBITMQ_QUEUE}\"",
                "queue = \"amq.orders\"",
                "settings.queue",
                "reserved by RabbitMQ",
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
        let message = Inventory::load(
            Path::new("/nonexistent/inventory.toml"),
            &env(),
            &platform(),
        )
        .expect_err("missing")
        .to_string();
        assert!(message.contains("/nonexistent/inventory.toml"), "{message}");
    }
}
