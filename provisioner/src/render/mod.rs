//! Rendering: the validated inventory, the env file and the Tera templates of `templates/` become
//! the desired state of every host ([`DesiredHost`]), without any network.
//!
//! Where things go (what plan/apply rely on):
//! - units at `/etc/systemd/system/<svc>.service` (0644 root): on change, daemon-reload and
//!   restart the service;
//! - env files at `/etc/<svc>/<svc>.env`, mode 0600 owned by root, never shown in a diff: systemd
//!   reads `EnvironmentFile=` as root before dropping privileges, so the service user needs no
//!   access and a compromised service cannot read the file back; on change, restart the service;
//! - PostgreSQL: `/etc/postgresql/{pg_version}/main/conf.d/60-provision.conf` (listen_addresses;
//!   restart postgresql) and `/etc/postgresql/{pg_version}/main/pg_hba.conf` (reload postgresql),
//!   where `{pg_version}` is [`crate::desired::PG_VERSION_PLACEHOLDER`], filled in by apply;
//! - RabbitMQ: `/etc/rabbitmq/rabbitmq.conf`, `/etc/rabbitmq/enabled_plugins` and
//!   `/etc/rabbitmq/rabbitmq-env.conf` (Erlang's ports on loopback) (restart rabbitmq-server);
//! - the host firewall, on hosts where a platform port listens (inventory's API, PostgreSQL,
//!   RabbitMQ): `/etc/platform-firewall/rules.nft` (reload `platform-firewall`) and its unit
//!   `/etc/systemd/system/platform-firewall.service` (daemon-reload, restart it).
//!
//! The parent folders (`/etc/<svc>`) are not listed: apply creates a missing parent (0755 root).

pub mod binaries;
pub mod env_file;
pub mod inventory;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tera::{Context, Tera};

use crate::render::binaries::BinarySet;
use crate::desired::{
    DesiredBinary, DesiredFile, DesiredHost, FileContent, Handler, PostgresDatabase, PostgresRole,
    PostgresState, RabbitMqState, Role, Secret, ServiceSpec, PG_VERSION_PLACEHOLDER,
};
use crate::render::env_file::{DatabaseCredentials, EnvFile};
use crate::render::inventory::{is_ip_address, Host, Inventory};

/// The services of the platform, in the order they start on a host: the gateway needs the
/// inventory API, billing nothing of the others.
pub const SERVICE_ORDER: [Role; 3] = [Role::Inventory, Role::Billing, Role::Gateway];

/// PostgreSQL's and RabbitMQ's ports on the hosts (the packages' defaults).
pub const POSTGRES_PORT: u16 = 5432;
pub const AMQP_PORT: u16 = 5672;

/// Erlang's port mapper and RabbitMQ's inter-node (distribution) port: only `rabbitmqctl` on
/// the broker's own host uses them, since the broker is a single node.
pub const EPMD_PORT: u16 = 4369;
pub const ERLANG_DISTRIBUTION_PORT: u16 = AMQP_PORT + 20_000;

/// systemd units of the packages, as handlers name them.
pub const POSTGRES_UNIT: &str = "postgresql";
pub const RABBITMQ_UNIT: &str = "rabbitmq-server";
/// Debian's and Ubuntu's rabbitmq-server starts epmd through this socket unit of erlang-base.
pub const EPMD_SOCKET: &str = "epmd.socket";

/// The host firewall: a oneshot unit loading one nftables table of our own from one file, so it
/// never touches rules that others (ufw, Docker, an administrator) keep in their own tables.
pub const FIREWALL_UNIT: &str = "platform-firewall";
pub const FIREWALL_RULES_PATH: &str = "/etc/platform-firewall/rules.nft";
pub const FIREWALL_TABLE: &str = "streaming_platform";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot load the templates from {dir}: {message}")]
    Templates { dir: PathBuf, message: String },
    #[error("template {template} (for {host}): {message}")]
    Template {
        template: String,
        host: String,
        message: String,
    },
    #[error("no binary for {service}")]
    MissingBinary { service: String },
    /// The I/O cause is the source, printed by the command\'s error chain, so not repeated here.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The desired state of every host of `inventory`, in the inventory's order.
///
/// `binaries` is `None` for `provision render`, which only writes files: the hosts then list no
/// binary to push. `templates` is the `templates/` folder.
pub fn desired_hosts(
    inventory: &Inventory,
    env: &EnvFile,
    templates: &Path,
    binaries: Option<&BinarySet>,
) -> Result<Vec<DesiredHost>, RenderError> {
    let renderer = Renderer::new(inventory, env, templates)?;
    inventory
        .hosts
        .iter()
        .map(|host| renderer.host(host, binaries))
        .collect()
}

/// Writes every file of every host to `out/<host>/<absolute path>` (`{pg_version}` stays
/// literally in the path). Secret files are created 0600, others keep their mode. Returns the
/// paths written.
pub fn render_to_dir(hosts: &[DesiredHost], out: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let mut written = Vec::new();
    for host in hosts {
        for file in &host.files {
            let path = out.join(&host.name).join(file.path.trim_start_matches('/'));
            let mode = match file.content {
                FileContent::SecretText(_) => 0o600,
                FileContent::Text(_) => file.mode & 0o777,
            };
            write_file(&path, file.content.bytes(), mode)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RenderError> {
    let error = |source| RenderError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    // Created with its final mode so a secret is never readable by others, even for a moment;
    // an existing file gets its mode set before the new content goes in.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
        .map_err(error)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(error)?;
    file.set_len(0).map_err(error)?;
    file.write_all(bytes).map_err(error)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for user names, passwords
/// and vhosts inside `postgres://` and `amqp://` URLs.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An address as the host part of a URL: IPv6 literals need brackets.
fn url_host(address: &str) -> String {
    if address.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// A `pg_hba.conf` address: a single IP as a /32 or /128, a host name as is.
fn hba_address(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => format!("{ip}/32"),
        Ok(std::net::IpAddr::V6(ip)) => format!("{ip}/128"),
        Err(_) => address.to_owned(),
    }
}

/// The address `client` uses to reach a server on `server`: loopback when they are one host.
fn reach(client: &Host, server: &Host) -> String {
    if client.name == server.name {
        "127.0.0.1".to_owned()
    } else {
        url_host(server.address())
    }
}

fn unit_name(role: Role) -> String {
    format!("{}.service", role.as_str())
}

#[derive(Serialize)]
struct UnitContext<'a> {
    host: &'a str,
    service: &'a str,
    user: &'a str,
    env_file: String,
    binary: String,
    after: Vec<String>,
}

/// A platform port on one host and who may reach it besides the host itself (loopback).
#[derive(Debug, Serialize)]
struct FirewallPort {
    port: u16,
    /// What listens there and who uses it, for the comment in the rules file.
    purpose: String,
    /// Client addresses matched by `ip saddr`: IPv4 addresses, and host names that nft
    /// resolves when it loads the rules.
    ipv4: Vec<String>,
    /// Client addresses matched by `ip6 saddr`.
    ipv6: Vec<String>,
}

impl FirewallPort {
    /// `clients` may include `server` itself: it reaches the port over loopback, always allowed.
    fn new<'h>(
        port: u16,
        purpose: &str,
        server: &Host,
        clients: impl IntoIterator<Item = &'h Host>,
    ) -> Self {
        let mut ipv4 = BTreeSet::new();
        let mut ipv6 = BTreeSet::new();
        for client in clients {
            if client.name == server.name {
                continue;
            }
            match client.address().parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(ip)) => ipv6.insert(ip.to_string()),
                Ok(std::net::IpAddr::V4(ip)) => ipv4.insert(ip.to_string()),
                Err(_) => ipv4.insert(client.address().to_owned()),
            };
        }
        Self {
            port,
            purpose: purpose.to_owned(),
            ipv4: ipv4.into_iter().collect(),
            ipv6: ipv6.into_iter().collect(),
        }
    }
}

#[derive(Serialize)]
struct HbaRule {
    database: String,
    user: String,
    address: String,
}

struct Renderer<'a> {
    tera: Tera,
    inventory: &'a Inventory,
    env: &'a EnvFile,
}

impl<'a> Renderer<'a> {
    fn new(
        inventory: &'a Inventory,
        env: &'a EnvFile,
        templates: &Path,
    ) -> Result<Self, RenderError> {
        let load_error = |message: String| RenderError::Templates {
            dir: templates.to_owned(),
            message,
        };
        if !templates.is_dir() {
            return Err(load_error("no such folder".to_owned()));
        }
        let pattern = format!("{}/**/*", templates.display());
        let mut tera = Tera::new(&pattern).map_err(|error| load_error(error_chain(&error)))?;
        // These are config files, not HTML: nothing must be escaped.
        tera.autoescape_on(Vec::new());
        Ok(Self {
            tera,
            inventory,
            env,
        })
    }

    fn render(
        &self,
        template: &str,
        host: &Host,
        context: &Context,
    ) -> Result<String, RenderError> {
        self.tera
            .render(template, context)
            .map_err(|error| RenderError::Template {
                template: template.to_owned(),
                host: host.name.clone(),
                message: error_chain(&error),
            })
    }

    fn render_serialized(
        &self,
        template: &str,
        host: &Host,
        value: &impl Serialize,
    ) -> Result<String, RenderError> {
        let context = Context::from_serialize(value).map_err(|error| RenderError::Template {
            template: template.to_owned(),
            host: host.name.clone(),
            message: error_chain(&error),
        })?;
        self.render(template, host, &context)
    }

    fn host(&self, host: &Host, binaries: Option<&BinarySet>) -> Result<DesiredHost, RenderError> {
        let services: Vec<Role> = SERVICE_ORDER
            .into_iter()
            .filter(|role| host.has(*role))
            .collect();
        let mut packages = Vec::new();
        if host.has(Role::Postgres) {
            packages.push("postgresql".to_owned());
        }
        if host.has(Role::Rabbitmq) {
            packages.push("rabbitmq-server".to_owned());
        }
        if !services.is_empty() {
            // Health checks run on the host itself with curl.
            packages.push("curl".to_owned());
        }

        let mut files = Vec::new();
        let mut desired_binaries = Vec::new();
        let mut specs = Vec::new();
        for &role in &services {
            let service = role.as_str();
            files.push(self.unit(host, role)?);
            files.push(self.env_file(host, role)?);
            if let Some(binaries) = binaries {
                let binary = binaries
                    .get(service)
                    .ok_or_else(|| RenderError::MissingBinary {
                        service: service.to_owned(),
                    })?;
                desired_binaries.push(DesiredBinary {
                    service: service.to_owned(),
                    local_path: binary.path.clone(),
                    remote_path: format!("/usr/local/bin/{service}"),
                    sha256: binary.sha256.clone(),
                });
            }
            specs.push(ServiceSpec {
                unit: service.to_owned(),
                health_url: self.health_url(role),
            });
        }

        let postgres = if host.has(Role::Postgres) {
            let (state, postgres_files) = self.postgres(host)?;
            files.extend(postgres_files);
            Some(state)
        } else {
            None
        };
        let mut host_units = Vec::new();
        let firewall_ports = self.firewall_ports(host);
        if !firewall_ports.is_empty() {
            files.extend(self.firewall_files(host, &firewall_ports)?);
            packages.push("nftables".to_owned());
            host_units.push(FIREWALL_UNIT.to_owned());
        }
        let rabbitmq = if host.has(Role::Rabbitmq) {
            files.extend(self.rabbitmq_files(host)?);
            let broker = self.env.broker();
            Some(RabbitMqState {
                vhost: self.inventory.settings.vhost.clone(),
                user: broker.user,
                password: broker.password,
                permissions: (".*".to_owned(), ".*".to_owned(), ".*".to_owned()),
                remove_guest: true,
                tags: vec!["management".to_owned()],
            })
        } else {
            None
        };

        Ok(DesiredHost {
            name: host.name.clone(),
            connection: host.connection.clone(),
            roles: host.roles.clone(),
            packages,
            system_users: services
                .iter()
                .map(|role| role.as_str().to_owned())
                .collect(),
            postgres,
            rabbitmq,
            files,
            binaries: desired_binaries,
            services: specs,
            host_units,
        })
    }

    /// The platform ports listening on `host`, each with the hosts that use it. The gateway's
    /// port is the platform's entry point, open to all, and RabbitMQ's management UI (15672)
    /// stays open too: Vagrant forwards it to the operator's machine through the VM's NAT
    /// interface, whose source address is no inventory host.
    fn firewall_ports(&self, host: &Host) -> Vec<FirewallPort> {
        let inventory = self.inventory;
        let mut ports = Vec::new();
        if host.has(Role::Inventory) {
            ports.push(FirewallPort::new(
                inventory.settings.inventory_port,
                "inventory API, called by the gateway",
                host,
                inventory.hosts_with(Role::Gateway),
            ));
        }
        if host.has(Role::Postgres) {
            let clients = inventory.hosts.iter().filter(|client| {
                (client.has(Role::Inventory) || client.has(Role::Billing))
                    && client.database_host.as_deref() == Some(host.name.as_str())
            });
            ports.push(FirewallPort::new(
                POSTGRES_PORT,
                "PostgreSQL, for the services whose database lives here",
                host,
                clients,
            ));
        }
        if host.has(Role::Rabbitmq) {
            let clients = inventory
                .hosts
                .iter()
                .filter(|client| client.has(Role::Gateway) || client.has(Role::Billing));
            ports.push(FirewallPort::new(
                AMQP_PORT,
                "AMQP, for the gateway (publishes) and billing (consumes)",
                host,
                clients,
            ));
            for (port, purpose) in [
                (
                    EPMD_PORT,
                    "Erlang's port mapper, for rabbitmqctl on this host",
                ),
                (
                    ERLANG_DISTRIBUTION_PORT,
                    "RabbitMQ's inter-node port, for rabbitmqctl on this host (single node)",
                ),
            ] {
                ports.push(FirewallPort::new(port, purpose, host, []));
            }
        }
        ports
    }

    fn firewall_files(
        &self,
        host: &Host,
        ports: &[FirewallPort],
    ) -> Result<Vec<DesiredFile>, RenderError> {
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("table", FIREWALL_TABLE);
        context.insert("rules", FIREWALL_RULES_PATH);
        context.insert("ports", ports);
        let unit = FIREWALL_UNIT;
        Ok(vec![
            // The unit's reload loads the file, which swaps the table in one transaction:
            // no moment without rules, unlike a restart (stop deletes the table).
            text_file(
                FIREWALL_RULES_PATH,
                self.render("firewall/rules.nft", host, &context)?,
                0o644,
                "root",
                vec![Handler::Reload(unit.to_owned())],
            ),
            text_file(
                format!("/etc/systemd/system/{unit}.service"),
                self.render(&format!("systemd/{unit}.service"), host, &context)?,
                0o644,
                "root",
                vec![Handler::DaemonReload, Handler::Restart(unit.to_owned())],
            ),
        ])
    }

    fn health_url(&self, role: Role) -> String {
        let settings = &self.inventory.settings;
        let port = match role {
            Role::Gateway => settings.gateway_port,
            Role::Inventory => settings.inventory_port,
            _ => settings.billing_health_port,
        };
        format!("http://127.0.0.1:{port}/health")
    }

    fn unit(&self, host: &Host, role: Role) -> Result<DesiredFile, RenderError> {
        let service = role.as_str();
        let mut after = Vec::new();
        let database_local = self
            .inventory
            .database_host_of(host)
            .is_some_and(|db| db.name == host.name);
        let broker_local = self.inventory.broker_host().name == host.name;
        match role {
            Role::Inventory if database_local => after.push("postgresql.service".to_owned()),
            Role::Billing => {
                if database_local {
                    after.push("postgresql.service".to_owned());
                }
                if broker_local {
                    after.push("rabbitmq-server.service".to_owned());
                }
            }
            Role::Gateway => {
                if host.has(Role::Inventory) {
                    after.push(unit_name(Role::Inventory));
                }
                if broker_local {
                    after.push("rabbitmq-server.service".to_owned());
                }
            }
            _ => {}
        }
        let context = UnitContext {
            host: &host.name,
            service,
            user: service,
            env_file: env_file_path(service),
            binary: format!("/usr/local/bin/{service}"),
            after,
        };
        let template = format!("systemd/{service}.service");
        let text = self.render_serialized(&template, host, &context)?;
        Ok(text_file(
            format!("/etc/systemd/system/{service}.service"),
            text,
            0o644,
            "root",
            vec![Handler::DaemonReload, Handler::Restart(service.to_owned())],
        ))
    }

    fn env_file(&self, host: &Host, role: Role) -> Result<DesiredFile, RenderError> {
        let settings = &self.inventory.settings;
        let service = role.as_str();
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("rust_log", &settings.rust_log);
        context.insert("queue", &settings.queue);
        match role {
            Role::Gateway => {
                context.insert("listen_addr", &format!("0.0.0.0:{}", settings.gateway_port));
                let urls: Vec<String> = self
                    .inventory
                    .hosts_with(Role::Inventory)
                    .map(|api| format!("http://{}:{}", reach(host, api), settings.inventory_port))
                    .collect();
                context.insert("inventory_urls", &urls);
                context.insert("amqp_url", self.amqp_url(host).expose());
            }
            Role::Inventory => {
                // Only the gateway calls the inventory API: stay on loopback when it is local.
                let only_local = self
                    .inventory
                    .hosts_with(Role::Gateway)
                    .all(|gateway| gateway.name == host.name);
                let ip = if only_local { "127.0.0.1" } else { "0.0.0.0" };
                context.insert("listen_addr", &format!("{ip}:{}", settings.inventory_port));
                let url = self.database_url(host, &self.env.inventory_database());
                context.insert("database_url", url.expose());
            }
            _ => {
                let url = self.database_url(host, &self.env.billing_database());
                context.insert("database_url", url.expose());
                context.insert("amqp_url", self.amqp_url(host).expose());
                context.insert(
                    "health_listen_addr",
                    &format!("127.0.0.1:{}", settings.billing_health_port),
                );
            }
        }
        let text = self.render(&format!("env/{service}.env"), host, &context)?;
        Ok(DesiredFile {
            path: env_file_path(service),
            content: FileContent::SecretText(Secret::new(text)),
            mode: 0o600,
            owner: "root".to_owned(),
            group: "root".to_owned(),
            on_change: vec![Handler::Restart(service.to_owned())],
        })
    }

    fn database_url(&self, host: &Host, database: &DatabaseCredentials) -> Secret {
        let server = self.inventory.database_host_of(host).unwrap_or(host);
        Secret::new(format!(
            "postgres://{}:{}@{}:{POSTGRES_PORT}/{}",
            percent_encode(&database.user),
            percent_encode(database.password.expose()),
            reach(host, server),
            percent_encode(&database.name),
        ))
    }

    fn amqp_url(&self, host: &Host) -> Secret {
        let broker = self.env.broker();
        Secret::new(format!(
            "amqp://{}:{}@{}:{AMQP_PORT}/{}",
            percent_encode(&broker.user),
            percent_encode(broker.password.expose()),
            reach(host, self.inventory.broker_host()),
            percent_encode(&self.inventory.settings.vhost),
        ))
    }

    /// Roles, databases, listen addresses and pg_hba of the PostgreSQL running on `host`: one
    /// database per service whose database lives here, reachable only from the hosts running
    /// that service.
    fn postgres(&self, host: &Host) -> Result<(PostgresState, Vec<DesiredFile>), RenderError> {
        let mut roles: Vec<PostgresRole> = Vec::new();
        let mut databases: Vec<PostgresDatabase> = Vec::new();
        let mut rules = Vec::new();
        let mut remote_clients = false;
        for (role, credentials) in [
            (Role::Inventory, self.env.inventory_database()),
            (Role::Billing, self.env.billing_database()),
        ] {
            let clients: Vec<&Host> = self
                .inventory
                .hosts_with(role)
                .filter(|client| client.database_host.as_deref() == Some(host.name.as_str()))
                .collect();
            if clients.is_empty() {
                continue;
            }
            if !roles.iter().any(|r| r.name == credentials.user) {
                roles.push(PostgresRole {
                    name: credentials.user.clone(),
                    password: credentials.password.clone(),
                });
            }
            if !databases.iter().any(|d| d.name == credentials.name) {
                databases.push(PostgresDatabase {
                    name: credentials.name.clone(),
                    owner: credentials.user.clone(),
                });
            }
            let mut addresses = BTreeSet::new();
            for client in clients {
                if client.name == host.name {
                    addresses.insert("127.0.0.1/32".to_owned());
                } else {
                    remote_clients = true;
                    addresses.insert(hba_address(client.address()));
                }
            }
            rules.extend(addresses.into_iter().map(|address| HbaRule {
                database: credentials.name.clone(),
                user: credentials.user.clone(),
                address,
            }));
        }
        let mut listen_addresses = vec!["localhost".to_owned()];
        if remote_clients {
            // PostgreSQL can bind a name, but the SSH address may resolve elsewhere: bind all.
            listen_addresses.push(if is_ip_address(host.address()) {
                host.address().to_owned()
            } else {
                "*".to_owned()
            });
        }
        let mut conf = Context::new();
        conf.insert("host", &host.name);
        conf.insert("listen_addresses", &listen_addresses);
        let mut hba = Context::new();
        hba.insert("host", &host.name);
        hba.insert("rules", &rules);
        let folder = format!("/etc/postgresql/{PG_VERSION_PLACEHOLDER}/main");
        let files = vec![
            // listen_addresses takes effect only at start.
            text_file(
                format!("{folder}/conf.d/60-provision.conf"),
                self.render("postgresql/provision.conf", host, &conf)?,
                0o644,
                "postgres",
                vec![Handler::Restart(POSTGRES_UNIT.to_owned())],
            ),
            text_file(
                format!("{folder}/pg_hba.conf"),
                self.render("postgresql/pg_hba.conf", host, &hba)?,
                0o640,
                "postgres",
                vec![Handler::Reload(POSTGRES_UNIT.to_owned())],
            ),
        ];
        Ok((PostgresState { roles, databases }, files))
    }

    fn rabbitmq_files(&self, host: &Host) -> Result<Vec<DesiredFile>, RenderError> {
        let remote_clients = self
            .inventory
            .hosts
            .iter()
            .filter(|client| client.has(Role::Gateway) || client.has(Role::Billing))
            .any(|client| client.name != host.name);
        let mut listeners = vec![format!("127.0.0.1:{AMQP_PORT}")];
        if remote_clients {
            listeners = if is_ip_address(host.address()) {
                vec![
                    listeners.remove(0),
                    format!("{}:{AMQP_PORT}", host.address()),
                ]
            } else {
                vec![format!("0.0.0.0:{AMQP_PORT}")]
            };
        }
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("listeners", &listeners);
        // All interfaces: Vagrant forwards the host's port to the VM's NAT interface.
        context.insert("management_ip", "0.0.0.0");
        context.insert("epmd_port", &EPMD_PORT);
        context.insert("distribution_port", &ERLANG_DISTRIBUTION_PORT);
        let restart = vec![Handler::Restart(RABBITMQ_UNIT.to_owned())];
        Ok(vec![
            text_file(
                "/etc/rabbitmq/rabbitmq-env.conf",
                self.render("rabbitmq/rabbitmq-env.conf", host, &context)?,
                0o644,
                "root",
                restart.clone(),
            ),
            // The running node registers again with the new epmd by itself (within a few
            // seconds); a restart of rabbitmq-server in the same apply (a fresh host) then
            // stops it by SIGTERM, as gracefully as `rabbitmqctl stop` would.
            text_file(
                format!("/etc/systemd/system/{EPMD_SOCKET}.d/provision-loopback.conf"),
                self.render("systemd/epmd.socket.conf", host, &context)?,
                0o644,
                "root",
                vec![
                    Handler::DaemonReload,
                    Handler::Restart(EPMD_SOCKET.to_owned()),
                ],
            ),
            text_file(
                "/etc/rabbitmq/rabbitmq.conf",
                self.render("rabbitmq/rabbitmq.conf", host, &context)?,
                0o644,
                "root",
                restart.clone(),
            ),
            text_file(
                "/etc/rabbitmq/enabled_plugins",
                self.render("rabbitmq/enabled_plugins", host, &context)?,
                0o644,
                "root",
                restart,
            ),
        ])
    }
}

/// A rendered, non-secret file owned by `owner` and its group.
fn text_file(
    path: impl Into<String>,
    text: String,
    mode: u32,
    owner: &str,
    on_change: Vec<Handler>,
) -> DesiredFile {
    DesiredFile {
        path: path.into(),
        content: FileContent::Text(text),
        mode,
        owner: owner.to_owned(),
        group: owner.to_owned(),
        on_change,
    }
}

/// `/etc/<svc>/<svc>.env`.
pub fn env_file_path(service: &str) -> String {
    format!("/etc/{service}/{service}.env")
}

/// An error and its causes on one line: Tera puts the useful part (which variable, which line)
/// in the causes.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("billing_vhost"), "billing_vhost");
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(
            percent_encode("p@ss:w/rd %é"),
            "p%40ss%3Aw%2Frd%20%25%C3%A9"
        );
    }

    #[test]
    fn addresses_fit_urls_and_pg_hba() {
        assert_eq!(url_host("fd00::1"), "[fd00::1]");
        assert_eq!(url_host("192.168.56.11"), "192.168.56.11");
        assert_eq!(hba_address("192.168.56.10"), "192.168.56.10/32");
        assert_eq!(hba_address("fd00::1"), "fd00::1/128");
        assert_eq!(hba_address("gw.example"), "gw.example");
    }
}
