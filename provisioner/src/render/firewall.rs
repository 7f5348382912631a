//! The host firewall (`templates/firewall/`, `templates/systemd/platform-firewall.service`): on
//! every host where a platform port listens for other hosts, one nftables table of our own opens
//! each such port to loopback and to the hosts that use it, and to nobody else.

use std::collections::BTreeSet;

use serde::Serialize;
use tera::Context;

use super::inventory::Host;
use super::monitoring::{
    holds_postgres, NODE_EXPORTER_PORT, POSTGRES_EXPORTER_PORT, PROMETHEUS_PORT,
    RABBITMQ_METRICS_PORT,
};
use super::patroni::{ETCD_CLIENT_PORT, ETCD_PEER_PORT, PATRONI_REST_PORT};
use super::platform::Component;
use super::rabbitmq::{EPMD_PORT, ERLANG_DISTRIBUTION_PORT};
use super::services::POSTGRES_PORT;
use super::tls::AMQPS_PORT;
use super::{text_file, RenderError, Renderer};
use crate::desired::{DesiredFile, Handler};

/// The host firewall: a oneshot unit loading one nftables table of our own from one file, so it
/// never touches rules that others (ufw, Docker, an administrator) keep in their own tables.
pub const FIREWALL_UNIT: &str = "platform-firewall";
pub const FIREWALL_RULES_PATH: &str = "/etc/platform-firewall/rules.nft";
pub const FIREWALL_TABLE: &str = "streaming_platform";

/// A platform port on one host and who may reach it besides the host itself (loopback).
#[derive(Debug, Serialize)]
pub struct FirewallPort {
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

impl Renderer<'_> {
    /// The platform ports listening on `host` for other hosts, each with the hosts that use it.
    /// A public service's port (the gateway's, the platform's entry point) is open to all, and
    /// RabbitMQ's management UI (15672) stays open too: Vagrant forwards it to the operator's
    /// machine through the VM's NAT interface, whose source address is no inventory host.
    pub fn firewall_ports(&self, host: &Host) -> Vec<FirewallPort> {
        let inventory = self.inventory;
        let platform = &inventory.platform;
        let mut ports = Vec::new();
        let monitoring: Vec<&Host> = inventory.monitoring_host().into_iter().collect();
        for service in inventory.services_of(host) {
            let mut users: Vec<&str> = platform
                .callers_of(&service.name)
                .map(|caller| caller.name.as_str())
                .collect();
            let mut clients: Vec<&Host> = inventory
                .hosts_running_any(|client| client.calls.contains(&service.name))
                .collect();
            if let Some(port) = service.metrics_port.filter(|_| !monitoring.is_empty()) {
                ports.push(FirewallPort::new(
                    port,
                    &format!("{}'s metrics, for Prometheus", service.name),
                    host,
                    monitoring.iter().copied(),
                ));
            } else if service.metrics.is_some() && !monitoring.is_empty() {
                users.push("Prometheus (its metrics)");
                clients.extend(&monitoring);
            }
            if service.public || users.is_empty() {
                continue;
            }
            ports.push(FirewallPort::new(
                inventory.port_of(service),
                &format!("{}, called by {}", service.summary, users.join(" and ")),
                host,
                clients,
            ));
        }
        if !monitoring.is_empty() {
            ports.push(FirewallPort::new(
                NODE_EXPORTER_PORT,
                "the host's metrics (node exporter), for Prometheus",
                host,
                monitoring.iter().copied(),
            ));
            if holds_postgres(host) {
                ports.push(FirewallPort::new(
                    POSTGRES_EXPORTER_PORT,
                    "PostgreSQL's metrics, for Prometheus",
                    host,
                    monitoring.iter().copied(),
                ));
            }
            if host.has(Component::Rabbitmq) {
                ports.push(FirewallPort::new(
                    RABBITMQ_METRICS_PORT,
                    "RabbitMQ's metrics (rabbitmq_prometheus), for Prometheus",
                    host,
                    monitoring.iter().copied(),
                ));
            }
        }
        for component in Component::ALL {
            if !host.has(component) {
                continue;
            }
            match component {
                Component::Postgres => {
                    let clients = inventory
                        .hosts_running_any(|service| service.database.is_some())
                        .filter(|client| {
                            client.database_host.as_deref() == Some(host.name.as_str())
                        });
                    ports.push(FirewallPort::new(
                        POSTGRES_PORT,
                        "PostgreSQL, for the services whose database lives here",
                        host,
                        clients,
                    ));
                }
                Component::Rabbitmq => {
                    let users: Vec<&str> = platform
                        .services()
                        .iter()
                        .filter(|service| service.broker)
                        .map(|service| service.name.as_str())
                        .collect();
                    ports.push(FirewallPort::new(
                        AMQPS_PORT,
                        &format!("AMQPS (AMQP over TLS), for {}", users.join(" and ")),
                        host,
                        inventory.hosts_running_any(|service| service.broker),
                    ));
                    let purposes = if inventory.broker_cluster() {
                        [
                            "Erlang's port mapper, for the other nodes of the RabbitMQ cluster",
                            "RabbitMQ's inter-node port, for the other nodes of the cluster",
                        ]
                    } else {
                        [
                            "Erlang's port mapper, for rabbitmqctl on this host",
                            "RabbitMQ's inter-node port, for rabbitmqctl on this host (single node)",
                        ]
                    };
                    let peers = inventory.broker_hosts();
                    for (port, purpose) in [EPMD_PORT, ERLANG_DISTRIBUTION_PORT]
                        .into_iter()
                        .zip(purposes)
                    {
                        ports.push(FirewallPort::new(
                            port,
                            purpose,
                            host,
                            peers.iter().copied(),
                        ));
                    }
                }
                // Prometheus's own port: this host alone (reached through SSH).
                Component::Monitoring => ports.push(FirewallPort::new(
                    PROMETHEUS_PORT,
                    "Prometheus, for this host alone (reach it through SSH)",
                    host,
                    std::iter::empty(),
                )),
                Component::Etcd => {
                    let peers = inventory.etcd_hosts();
                    let clients = peers.iter().copied().chain(inventory.patroni_hosts());
                    ports.push(FirewallPort::new(
                        ETCD_CLIENT_PORT,
                        "etcd's clients: the Patroni members (and the etcd members)",
                        host,
                        clients,
                    ));
                    ports.push(FirewallPort::new(
                        ETCD_PEER_PORT,
                        "etcd's peers: the other members of the etcd cluster",
                        host,
                        peers.iter().copied(),
                    ));
                }
                Component::Patroni => {
                    // The other members (replication, pg_rewind, Patroni asking each other)
                    // and HAProxy on the hosts whose services own a database.
                    let members = inventory.patroni_hosts();
                    let haproxy: Vec<&Host> = inventory
                        .hosts_running_any(|service| service.database.is_some())
                        .collect();
                    let clients = || members.iter().chain(&haproxy).copied();
                    ports.push(FirewallPort::new(
                        POSTGRES_PORT,
                        "PostgreSQL of the Patroni cluster: its members, and HAProxy on the services' hosts",
                        host,
                        clients(),
                    ));
                    ports.push(FirewallPort::new(
                        PATRONI_REST_PORT,
                        "Patroni's REST API: its members, and HAProxy's health checks",
                        host,
                        clients(),
                    ));
                }
            }
        }
        ports
    }

    pub fn firewall_files(
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
}
