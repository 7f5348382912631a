//! The render half: the platform description (`platform.toml`), the validated inventory, the
//! env file and the Tera templates of `templates/` become the desired state of every host
//! ([`DesiredHost`]), without any network. One module per folder of `templates/`: [`services`]
//! (`systemd/`, `env/`), [`firewall`], [`postgresql`], [`rabbitmq`].
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
//! - the host firewall, on hosts where a platform port listens for other hosts (a called
//!   service's API, PostgreSQL, RabbitMQ): `/etc/platform-firewall/rules.nft` (reload
//!   `platform-firewall`) and its unit `/etc/systemd/system/platform-firewall.service`
//!   (daemon-reload, restart it).
//!
//! The parent folders (`/etc/<svc>`) are not listed: apply creates a missing parent (0755 root).

pub mod binaries;
pub mod env_file;
pub mod firewall;
pub mod hardening;
pub mod inventory;
pub mod keepalived;
pub mod located;
pub mod monitoring;
pub mod patroni;
pub mod platform;
pub mod postgresql;
pub mod rabbitmq;
pub mod services;
pub mod tls;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use service_common::error_chain;
use tera::{Context, Tera};

use crate::desired::{DesiredFile, DesiredHost, FileContent, Handler};
use crate::pki::Pki;
use binaries::BinarySet;
use env_file::EnvFile;
use inventory::{Host, Inventory};
use platform::Component;

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
    #[error("no certificate was issued for {host}")]
    MissingCertificate { host: String },
    /// The secret a RabbitMQ cluster's nodes share is missing or unusable.
    #[error("{path}: {variable} {problem} (the Erlang cookie the nodes of a RabbitMQ cluster share; see .env.example)")]
    ClusterCookie {
        path: PathBuf,
        variable: &'static str,
        problem: &'static str,
    },
    /// A password of the Patroni cluster is missing or unusable (never echoed).
    #[error("{path}: {variable} {problem} (a password of the Patroni cluster; see .env.example)")]
    PatroniSecret {
        path: PathBuf,
        variable: &'static str,
        problem: &'static str,
    },
    /// The gateway's token public key is unusable.
    #[error("{path}: {variable} {problem}")]
    JwtPublicKey {
        path: PathBuf,
        variable: &'static str,
        problem: String,
    },
    /// The gateway's token secret is unusable (never echoed).
    #[error("{path}: {variable} {problem} (the HS256 secret of the gateway's bearer tokens; see .env.example)")]
    JwtSecret {
        path: PathBuf,
        variable: &'static str,
        problem: &'static str,
    },
    /// The I/O cause is the source, printed by the command\'s error chain, so not repeated here.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
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

/// The desired state of every host of `inventory`, in the inventory's order.
///
/// `binaries` is `None` for `provision render`, which only writes files: the hosts then list no
/// binary to push. `templates` is the `templates/` folder; `pki` holds the CA and every host's
/// certificate ([`Pki::open`]).
pub fn desired_hosts(
    inventory: &Inventory,
    env: &EnvFile,
    templates: &Path,
    binaries: Option<&BinarySet>,
    pki: &Pki,
) -> Result<Vec<DesiredHost>, RenderError> {
    let renderer = Renderer::new(inventory, env, templates, pki)?;
    inventory
        .hosts
        .iter()
        .map(|host| renderer.host(host, binaries))
        .collect()
}

/// RFC 3986's unreserved characters are all that stays as is in a URL's user, password or path.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters, for user names, passwords
/// and vhosts inside `postgres://` and `amqp://` URLs.
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, NOT_UNRESERVED).to_string()
}

/// An address as the host part of a URL: IPv6 literals need brackets.
pub fn url_host(address: &str) -> String {
    if address.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// A `pg_hba.conf` address: a single IP as a /32 or /128, a host name as is.
pub fn hba_address(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => format!("{ip}/32"),
        Ok(std::net::IpAddr::V6(ip)) => format!("{ip}/128"),
        Err(_) => address.to_owned(),
    }
}

/// The address `client` uses to reach a server on `server`: loopback when they are one host.
pub fn reach(client: &Host, server: &Host) -> String {
    if client.name == server.name {
        "127.0.0.1".to_owned()
    } else {
        url_host(server.address())
    }
}

/// The templates, loaded once, and what every module renders from.
pub(crate) struct Renderer<'a> {
    tera: Tera,
    inventory: &'a Inventory,
    env: &'a EnvFile,
    /// The platform CA and the hosts' certificates.
    pki: &'a Pki,
    /// The RSA public key of the gateway's tokens, when `.env` names one.
    jwt_public_key: Option<String>,
}

impl<'a> Renderer<'a> {
    pub fn new(
        inventory: &'a Inventory,
        env: &'a EnvFile,
        templates: &Path,
        pki: &'a Pki,
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
            jwt_public_key: services::read_jwt_public_key(env)?,
            env,
            pki,
        })
    }

    pub fn render(
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

    pub fn render_serialized(
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

    /// Whether `templates/` holds `name`.
    pub fn has_template(&self, name: &str) -> bool {
        self.tera.get_template_names().any(|known| known == name)
    }

    /// The desired state of `host`: its components' packages, files and state, then its
    /// services' units, env files and binaries, then the firewall over all of them.
    pub fn host(
        &self,
        host: &Host,
        binaries: Option<&BinarySet>,
    ) -> Result<DesiredHost, RenderError> {
        let inventory = self.inventory;
        let services: Vec<_> = inventory.services_of(host).collect();
        let mut packages: Vec<String> = Vec::new();
        for component in Component::ALL {
            if host.has(component) {
                packages.extend(component.packages().iter().map(|name| (*name).to_owned()));
            }
        }
        if !services.is_empty() {
            // Health checks run on the host itself with curl.
            packages.push("curl".to_owned());
        }
        // postgresql and curl may come from two roles: each once.
        let mut seen = std::collections::BTreeSet::new();
        packages.retain(|name| seen.insert(name.clone()));

        let mut files = Vec::new();
        let mut desired_binaries = Vec::new();
        let mut specs = Vec::new();
        for service in &services {
            files.push(self.unit(host, service)?);
            files.extend(self.socket(host, service)?);
            files.push(self.env_file(host, service)?);
            files.extend(self.service_tls_files(host, service)?);
            files.extend(self.jwt_public_key_file(service)?);
            if let Some(binaries) = binaries {
                desired_binaries.push(services::binary(binaries, service)?);
            }
            specs.push(self.spec(host, service));
        }

        let mut postgres = None;
        let mut rabbitmq = None;
        let mut host_units = Vec::new();
        for component in Component::ALL {
            if !host.has(component) {
                continue;
            }
            match component {
                Component::Postgres => {
                    let (state, postgres_files) = self.postgres(host)?;
                    files.extend(postgres_files);
                    postgres = Some(state);
                }
                Component::Rabbitmq => {
                    let (state, rabbitmq_files) = self.rabbitmq(host)?;
                    files.extend(rabbitmq_files);
                    rabbitmq = Some(state);
                }
                Component::Etcd => {
                    files.extend(self.etcd(host)?);
                    host_units.push(component.unit().to_owned());
                }
                Component::Patroni => {
                    let (state, patroni_files) = self.patroni(host)?;
                    files.extend(patroni_files);
                    postgres = Some(state);
                    host_units.push(component.unit().to_owned());
                }
                Component::Monitoring => {
                    files.extend(self.prometheus(host)?);
                    host_units.push(component.unit().to_owned());
                }
            }
        }
        let exporters = self.exporters(host)?;
        packages.extend(exporters.packages);
        host_units.extend(exporters.units);
        files.extend(exporters.files);
        if let Some(haproxy_files) = self.haproxy(host)? {
            files.extend(haproxy_files);
            packages.push("haproxy".to_owned());
            host_units.push(patroni::HAPROXY_UNIT.to_owned());
        }
        if let Some(conf) = self.keepalived(host)? {
            files.push(conf);
            packages.push("keepalived".to_owned());
            host_units.push(keepalived::KEEPALIVED_UNIT.to_owned());
        }
        files.extend(self.hardening(host, &host_units)?);
        let firewall_ports = self.firewall_ports(host);
        if !firewall_ports.is_empty() {
            files.extend(self.firewall_files(host, &firewall_ports)?);
            packages.push("nftables".to_owned());
            host_units.push(firewall::FIREWALL_UNIT.to_owned());
        }

        Ok(DesiredHost {
            name: host.name.clone(),
            connection: host.connection.clone(),
            packages,
            system_users: services
                .iter()
                .map(|service| service.name.clone())
                .collect(),
            postgres,
            rabbitmq,
            files,
            binaries: desired_binaries,
            services: specs,
            host_units,
        })
    }
}

/// A rendered, non-secret file owned by `owner` and its group.
pub fn text_file(
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
