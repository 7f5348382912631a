//! `platform.toml`: the platform's services as data (name, port setting, health and readiness
//! paths, database, broker, whom it calls), and the infrastructure components hosts may run.
//! Everything that differs between services is read from here; the pipeline holds no list of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::located::{syntax_error, Located};

/// The `[settings]` keys of `inventory.toml` that are not a service's port.
pub const FIXED_SETTINGS: [&str; 9] = [
    "queue",
    "vhost",
    "rust_log",
    "log_format",
    "target_arch",
    "vip",
    "vip_interface",
    "rate_limit_per_second",
    "rate_limit_burst",
];

/// The broker's credentials in `.env`, needed when a service uses the broker.
pub const BROKER_VARIABLES: [&str; 2] = ["RABBITMQ_USER", "RABBITMQ_PASSWORD"];

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The I/O cause is the source, printed by the command's error chain, so not repeated here.
    #[error("cannot read the platform description {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] Located),
}

/// An infrastructure component a host may run beside services: an engine installed from the
/// distribution's packages, configured by templates of its own folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Postgres,
    Rabbitmq,
    /// A member of the etcd cluster that the Patroni cluster keeps its leader lock in.
    Etcd,
    /// A member of the Patroni cluster: PostgreSQL holding every service's database, replicated
    /// to the other members, its primary chosen by Patroni.
    Patroni,
    /// Prometheus, scraping every service and host of the platform, with its alert rules.
    Monitoring,
}

impl Component {
    pub const ALL: [Self; 5] = [
        Self::Postgres,
        Self::Rabbitmq,
        Self::Etcd,
        Self::Patroni,
        Self::Monitoring,
    ];

    /// Its role name in `inventory.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Rabbitmq => "rabbitmq",
            Self::Etcd => "etcd",
            Self::Patroni => "patroni",
            Self::Monitoring => "monitoring",
        }
    }

    /// The Debian packages that install it.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Self::Postgres => &["postgresql"],
            Self::Rabbitmq => &["rabbitmq-server"],
            // etcdctl: provision's restart of a member, and the operator's (README).
            Self::Etcd => &["etcd-server", "etcd-client"],
            // curl asks Patroni's REST API which member is the primary (facts, status).
            Self::Patroni => &["postgresql", "patroni", "curl"],
            Self::Monitoring => &["prometheus"],
        }
    }

    /// Its systemd unit, as handlers and `After=` name it.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Postgres => "postgresql",
            Self::Rabbitmq => "rabbitmq-server",
            Self::Etcd => "etcd",
            Self::Patroni => "patroni",
            Self::Monitoring => "prometheus",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|component| component.name() == name)
    }
}

/// One service of the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDescription {
    /// Role, unit, system user, cargo package and binary name.
    pub name: String,
    /// The unit's `Description`.
    pub summary: String,
    /// The `[settings]` key of the inventory holding its port.
    pub port_setting: String,
    /// Listens on every interface, open to all.
    pub public: bool,
    pub health: String,
    pub ready: String,
    /// Prefix of its database credentials in `.env`.
    pub database: Option<String>,
    pub broker: bool,
    /// Services it calls over HTTP.
    pub calls: Vec<String>,
    /// The path of its Prometheus metrics, when it serves them.
    pub metrics: Option<String>,
    /// The port of a listener of its own for the metrics (`METRICS_LISTEN_ADDR`), when they must
    /// not be on its main port (a public service's); else they are served there.
    pub metrics_port: Option<u16>,
}

impl ServiceDescription {
    /// The `.env` variables of its database: name, owner and the owner's password.
    pub fn database_variables(&self) -> Option<[String; 3]> {
        self.database.as_ref().map(|prefix| {
            [
                format!("{prefix}_DB_NAME"),
                format!("{prefix}_DB_USER"),
                format!("{prefix}_DB_PASSWORD"),
            ]
        })
    }
}

/// The validated description.
#[derive(Debug, Clone)]
pub struct Platform {
    pub path: PathBuf,
    /// In start order: a service after those it calls, ties in file order.
    services: Vec<ServiceDescription>,
}

impl Platform {
    pub fn load(path: &Path) -> Result<Self, PlatformError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlatformError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PlatformError> {
        let raw: RawPlatform =
            toml::from_str(text).map_err(|error| syntax_error(path, text, &error))?;
        let error =
            |span, field: &str, message: String| Located::at(path, text, span, field, message);
        let mut services = Vec::new();
        for (index, raw) in raw.services.get_ref().iter().enumerate() {
            services.push(validate_service(index, raw, &services, &error)?);
        }
        if services.is_empty() {
            return Err(error(
                raw.services.span(),
                "services",
                "at least one service is needed".into(),
            )
            .into());
        }
        for (index, raw) in raw.services.get_ref().iter().enumerate() {
            for callee in &raw.calls {
                if !services
                    .iter()
                    .any(|service| service.name == *callee.get_ref())
                {
                    return Err(error(
                        callee.span(),
                        &format!("services[{index}].calls"),
                        format!("`{}` is no service of this file", callee.get_ref()),
                    )
                    .into());
                }
                if callee.get_ref() == raw.name.get_ref() {
                    return Err(error(
                        callee.span(),
                        &format!("services[{index}].calls"),
                        "a service cannot call itself".into(),
                    )
                    .into());
                }
            }
        }
        let services = start_order(services).map_err(|cycle| {
            error(
                raw.services.span(),
                "services.calls",
                format!("the calls form a cycle: {}", cycle.join(", ")),
            )
        })?;
        Ok(Self {
            path: path.to_owned(),
            services,
        })
    }

    /// Every service, in start order.
    pub fn services(&self) -> &[ServiceDescription] {
        &self.services
    }

    pub fn service(&self, name: &str) -> Option<&ServiceDescription> {
        self.services.iter().find(|service| service.name == name)
    }

    /// The services that call `name`.
    pub fn callers_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ServiceDescription> {
        self.services
            .iter()
            .filter(move |service| service.calls.iter().any(|callee| callee == name))
    }

    /// Whether some service uses the broker (then exactly one host must run it).
    pub fn uses_broker(&self) -> bool {
        self.services.iter().any(|service| service.broker)
    }

    /// The `.env` variables every deployment of this platform needs: each database's name, owner
    /// and password, and the broker's user and password when a service uses it.
    pub fn required_variables(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .iter()
            .filter_map(ServiceDescription::database_variables)
            .flatten()
            .collect();
        if self.uses_broker() {
            names.extend(BROKER_VARIABLES.map(str::to_owned));
        }
        names
    }

    /// The role names `inventory.toml` accepts, for error messages.
    pub fn role_names(&self) -> Vec<&str> {
        self.services
            .iter()
            .map(|service| service.name.as_str())
            .chain(Component::ALL.map(Component::name))
            .collect()
    }
}

/// The services sorted so each comes after those it calls, ties in file order; a cycle is an
/// error naming the services in it.
fn start_order(
    mut pending: Vec<ServiceDescription>,
) -> Result<Vec<ServiceDescription>, Vec<String>> {
    let mut ordered: Vec<ServiceDescription> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|service| {
            service
                .calls
                .iter()
                .all(|callee| ordered.iter().any(|done| &done.name == callee))
        });
        match ready {
            Some(index) => ordered.push(pending.remove(index)),
            None => return Err(pending.into_iter().map(|service| service.name).collect()),
        }
    }
    Ok(ordered)
}

/// A service name is a role, a unit, a user, a package and a Tera variable prefix: keep it plain.
fn is_service_name(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// An env-variable prefix: upper-case letters, digits and `_`.
fn is_variable_prefix(prefix: &str) -> bool {
    prefix.starts_with(|c: char| c.is_ascii_uppercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn validate_service(
    index: usize,
    raw: &RawService,
    earlier: &[ServiceDescription],
    error: &impl Fn(std::ops::Range<usize>, &str, String) -> Located,
) -> Result<ServiceDescription, Located> {
    let field = |name: &str| format!("services[{index}].{name}");
    let name = raw.name.get_ref().clone();
    if !is_service_name(&name) {
        return Err(error(
            raw.name.span(),
            &field("name"),
            format!(
                "`{name}` is not a service name (lower-case letters, digits and `_`, at most 32)"
            ),
        ));
    }
    if Component::from_name(&name).is_some() {
        return Err(error(
            raw.name.span(),
            &field("name"),
            format!("`{name}` is a component's role, not a service's"),
        ));
    }
    if let Some(first) = earlier.iter().position(|service| service.name == name) {
        return Err(error(
            raw.name.span(),
            &field("name"),
            format!("service `{name}` is already services[{first}]"),
        ));
    }
    // It goes into the unit's `Description=`: one line of printable text.
    let summary = raw.summary.get_ref();
    if summary.trim().is_empty() || summary.chars().any(char::is_control) {
        return Err(error(
            raw.summary.span(),
            &field("summary"),
            "must be one non-empty line of printable text".into(),
        ));
    }
    let port_setting = raw.port.get_ref().clone();
    if FIXED_SETTINGS.contains(&port_setting.as_str()) || !is_service_name(&port_setting) {
        return Err(error(
            raw.port.span(),
            &field("port"),
            format!(
                "`{port_setting}` cannot be a port setting (a plain name, not one of {})",
                FIXED_SETTINGS.join(", ")
            ),
        ));
    }
    if let Some(other) = earlier
        .iter()
        .find(|service| service.port_setting == port_setting)
    {
        return Err(error(
            raw.port.span(),
            &field("port"),
            format!("`{port_setting}` is already the port of {}", other.name),
        ));
    }
    for (value, key) in [(&raw.health, "health"), (&raw.ready, "ready")]
        .into_iter()
        .chain(raw.metrics.as_ref().map(|metrics| (metrics, "metrics")))
    {
        if !value.get_ref().starts_with('/') || value.get_ref().contains(char::is_whitespace) {
            return Err(error(
                value.span(),
                &field(key),
                format!(
                    "`{}` is not a URL path (starts with `/`, no spaces)",
                    value.get_ref()
                ),
            ));
        }
    }
    if let Some(prefix) = &raw.database {
        if !is_variable_prefix(prefix.get_ref()) {
            return Err(error(
                prefix.span(),
                &field("database"),
                format!(
                    "`{}` is not an env-variable prefix (upper-case letters, digits, `_`)",
                    prefix.get_ref()
                ),
            ));
        }
    }
    let mut calls = Vec::new();
    let mut seen = BTreeSet::new();
    for callee in &raw.calls {
        if !seen.insert(callee.get_ref().clone()) {
            return Err(error(
                callee.span(),
                &field("calls"),
                format!("`{}` is listed twice", callee.get_ref()),
            ));
        }
        calls.push(callee.get_ref().clone());
    }
    if let Some(port) = &raw.metrics_port {
        if raw.metrics.is_none() || *port.get_ref() == 0 {
            return Err(error(
                port.span(),
                &field("metrics_port"),
                "a port from 1 to 65535, beside `metrics` (the path served there)".into(),
            ));
        }
    }
    Ok(ServiceDescription {
        name,
        summary: summary.clone(),
        port_setting,
        public: raw.public,
        health: raw.health.get_ref().clone(),
        ready: raw.ready.get_ref().clone(),
        database: raw.database.as_ref().map(|prefix| prefix.get_ref().clone()),
        broker: raw.broker,
        calls,
        metrics: raw.metrics.as_ref().map(|path| path.get_ref().clone()),
        metrics_port: raw.metrics_port.as_ref().map(|port| *port.get_ref()),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    services: Spanned<Vec<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    summary: Spanned<String>,
    port: Spanned<String>,
    public: bool,
    health: Spanned<String>,
    ready: Spanned<String>,
    database: Option<Spanned<String>>,
    broker: bool,
    #[serde(default)]
    calls: Vec<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    metrics_port: Option<Spanned<u16>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[services]]
name = "gateway"
summary = "entry"
port = "gateway_port"
public = true
health = "/health"
ready = "/ready"
broker = true
calls = ["inventory"]

[[services]]
name = "inventory"
summary = "catalogue"
port = "inventory_port"
public = false
health = "/health"
ready = "/ready"
database = "INVENTORY"
broker = false
"#;

    fn parse(text: &str) -> Result<Platform, PlatformError> {
        Platform::parse(Path::new("/srv/platform.toml"), text)
    }

    #[track_caller]
    fn refused(text: &str, field: &str, words: &str) {
        let message = parse(text).expect_err("refused").to_string();
        assert!(
            message.starts_with("/srv/platform.toml, line "),
            "{message}"
        );
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains(words), "{message}");
    }

    #[test]
    fn services_start_after_those_they_call() {
        let platform = parse(GOOD).expect("valid");
        let names: Vec<&str> = platform
            .services()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["inventory", "gateway"]);
        assert_eq!(
            platform.required_variables(),
            [
                "INVENTORY_DB_NAME",
                "INVENTORY_DB_USER",
                "INVENTORY_DB_PASSWORD",
                "RABBITMQ_USER",
                "RABBITMQ_PASSWORD"
            ]
        );
        let callers: Vec<&str> = platform
            .callers_of("inventory")
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(callers, ["gateway"]);
        assert_eq!(
            platform.role_names(),
            [
                "inventory",
                "gateway",
                "postgres",
                "rabbitmq",
                "etcd",
                "patroni",
                "monitoring"
            ]
        );
    }

    #[test]
    fn the_committed_description_is_valid_and_in_todays_start_order() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../platform.toml");
        let platform = Platform::load(&path).expect("platform.toml is valid");
        let names: Vec<&str> = platform
            .services()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["inventory", "billing", "gateway"]);
    }

    #[test]
    fn bad_descriptions_name_line_and_field() {
        refused(
            &GOOD.replace("calls = [\"inventory\"]", "calls = [\"catalog\"]"),
            "services[0].calls",
            "`catalog` is no service",
        );
        refused(
            &GOOD.replace("calls = [\"inventory\"]", "calls = [\"gateway\"]"),
            "services[0].calls",
            "itself",
        );
        refused(
            &GOOD.replace("name = \"inventory\"", "name = \"gateway\""),
            "services[1].name",
            "already services[0]",
        );
        refused(
            &GOOD.replace("name = \"inventory\"", "name = \"postgres\""),
            "services[1].name",
            "component",
        );
        refused(
            &GOOD.replace("name = \"inventory\"", "name = \"Inventory-API\""),
            "services[1].name",
            "not a service name",
        );
        refused(
            &GOOD.replace("port = \"inventory_port\"", "port = \"gateway_port\""),
            "services[1].port",
            "already the port of gateway",
        );
        refused(
            &GOOD.replace("port = \"inventory_port\"", "port = \"queue\""),
            "services[1].port",
            "cannot be a port setting",
        );
        refused(
            &GOOD.replacen("health = \"/health\"", "health = \"health\"", 1),
            "services[0].health",
            "not a URL path",
        );
        refused(
            &GOOD.replace("database = \"INVENTORY\"", "database = \"inventory db\""),
            "services[1].database",
            "prefix",
        );
        refused(
            &GOOD.replace("broker = false", "broker = false\nport_number = 3"),
            "services[1].port_number",
            "unknown field",
        );
        // A summary goes into the unit: a second line would be a directive of its own.
        refused(
            &GOOD.replace(
                "summary = \"entry\"",
                "summary = \"entry\\nExecStartPre=/bin/false\"",
            ),
            "services[0].summary",
            "one non-empty line",
        );
    }

    #[test]
    fn a_cycle_of_calls_is_refused() {
        let text = GOOD.replace("broker = false", "broker = false\ncalls = [\"gateway\"]");
        refused(&text, "services.calls", "cycle: gateway, inventory");
    }
}
