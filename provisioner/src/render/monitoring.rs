//! What the inventory's `monitoring` host sees (`templates/prometheus/`): Prometheus there,
//! scraping every service's metrics, an exporter of every host (node), of every PostgreSQL
//! (postgres) and RabbitMQ's own (`rabbitmq_prometheus`), with the platform's alert rules. Without
//! a `monitoring` host, none of it exists.

use serde::Serialize;
use service_common::queue::dead_letter_queue_name;
use tera::Context;

use super::inventory::Host;
use super::platform::{Component, ServiceDescription};
use super::tls::TlsPaths;
use super::{reach, text_file, url_host, RenderError, Renderer};
use crate::desired::{DesiredFile, Handler};

pub const PROMETHEUS_CONFIG: &str = "/etc/prometheus/prometheus.yml";
pub const PROMETHEUS_RULES: &str = "/etc/prometheus/platform-alerts.yml";
pub const PROMETHEUS_PORT: u16 = 9090;
pub const NODE_EXPORTER: &str = "prometheus-node-exporter";
pub const NODE_EXPORTER_PORT: u16 = 9100;
pub const POSTGRES_EXPORTER: &str = "prometheus-postgres-exporter";
pub const POSTGRES_EXPORTER_PORT: u16 = 9187;
/// The `rabbitmq_prometheus` plugin's listener.
pub const RABBITMQ_METRICS_PORT: u16 = 15692;
/// How often Prometheus scrapes and evaluates the rules.
const INTERVAL: &str = "10s";

#[derive(Serialize)]
struct Target {
    address: String,
    host: String,
}

#[derive(Serialize)]
struct Job {
    name: String,
    path: String,
    params: Vec<(String, String)>,
    targets: Vec<Target>,
    /// Scraped over HTTPS with these files (a service that serves HTTPS on its one port).
    tls: Option<TlsPaths>,
}

/// The exporters, files and units a monitored host gets.
#[derive(Debug, Default)]
pub struct Exporters {
    pub packages: Vec<String>,
    pub units: Vec<String>,
    pub files: Vec<DesiredFile>,
}

/// Whether `host` holds a PostgreSQL (its own, or a Patroni member's).
pub fn holds_postgres(host: &Host) -> bool {
    host.has(Component::Postgres) || host.has(Component::Patroni)
}

impl Renderer<'_> {
    /// The port a service's metrics are scraped on: its own listener's, else its main port.
    pub fn metrics_port(&self, service: &ServiceDescription) -> Option<u16> {
        service.metrics.as_ref()?;
        Some(
            service
                .metrics_port
                .unwrap_or_else(|| self.inventory.port_of(service)),
        )
    }

    /// Whether the monitoring host is another host than `host`, so what it scrapes here must
    /// listen beyond loopback.
    pub fn scraped_from_elsewhere(&self, host: &Host) -> bool {
        self.inventory
            .monitoring_host()
            .is_some_and(|monitoring| monitoring.name != host.name)
    }

    /// `METRICS_LISTEN_ADDR` of a service with a metrics listener of its own, when monitored.
    pub fn metrics_listen_addr(&self, host: &Host, service: &ServiceDescription) -> Option<String> {
        self.inventory.monitoring_host()?;
        let port = service.metrics_port?;
        let ip = if self.scraped_from_elsewhere(host) {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        Some(format!("{ip}:{port}"))
    }

    /// The exporters of a monitored host: node's everywhere, PostgreSQL's beside a PostgreSQL.
    pub fn exporters(&self, host: &Host) -> Result<Exporters, RenderError> {
        let mut exporters = Exporters::default();
        if self.inventory.monitoring_host().is_none() {
            return Ok(exporters);
        }
        exporters.packages.push(NODE_EXPORTER.to_owned());
        exporters.units.push(NODE_EXPORTER.to_owned());
        if holds_postgres(host) {
            let mut context = Context::new();
            context.insert("host", &host.name);
            exporters.packages.push(POSTGRES_EXPORTER.to_owned());
            exporters.units.push(POSTGRES_EXPORTER.to_owned());
            exporters.files.push(text_file(
                format!("/etc/default/{POSTGRES_EXPORTER}"),
                self.render("prometheus/postgres-exporter.env", host, &context)?,
                0o644,
                "root",
                vec![Handler::Restart(POSTGRES_EXPORTER.to_owned())],
            ));
            exporters.files.push(text_file(
                format!("/etc/systemd/system/{POSTGRES_EXPORTER}.service.d/provision.conf"),
                self.render("prometheus/postgres-exporter.conf", host, &context)?,
                0o644,
                "root",
                vec![
                    Handler::DaemonReload,
                    Handler::Restart(POSTGRES_EXPORTER.to_owned()),
                ],
            ));
        }
        Ok(exporters)
    }

    /// Prometheus's configuration and alert rules, on the monitoring host.
    pub fn prometheus(&self, host: &Host) -> Result<Vec<DesiredFile>, RenderError> {
        let inventory = self.inventory;
        let targets = |hosts: Vec<&Host>, port: u16| -> Vec<Target> {
            hosts
                .into_iter()
                .map(|target| Target {
                    address: format!("{}:{port}", reach(host, target)),
                    host: target.name.clone(),
                })
                .collect()
        };
        let job = |name: &str, path: &str, targets: Vec<Target>| Job {
            name: name.to_owned(),
            path: path.to_owned(),
            params: Vec::new(),
            targets,
            tls: None,
        };
        let tls_paths = TlsPaths::of("prometheus");
        let mut tls_scrapes = false;
        let mut jobs = Vec::new();
        for service in inventory.platform.services() {
            let (Some(path), Some(port)) = (&service.metrics, self.metrics_port(service)) else {
                continue;
            };
            let hosts: Vec<&Host> = inventory.hosts_running(&service.name).collect();
            if service.metrics_port.is_none() && self.serves_tls(service) {
                // Its one port speaks HTTPS and asks for a certificate of the platform CA.
                let mut scraped = job(&service.name, path, Vec::new());
                scraped.targets = hosts
                    .iter()
                    .map(|target| Target {
                        address: format!("{}:{port}", url_host(target.address())),
                        host: target.name.clone(),
                    })
                    .collect();
                scraped.tls = Some(tls_paths.clone());
                tls_scrapes = true;
                jobs.push(scraped);
            } else {
                jobs.push(job(&service.name, path, targets(hosts, port)));
            }
        }
        jobs.push(job(
            "node",
            "/metrics",
            targets(inventory.hosts.iter().collect(), NODE_EXPORTER_PORT),
        ));
        let databases: Vec<&Host> = inventory
            .hosts
            .iter()
            .filter(|h| holds_postgres(h))
            .collect();
        if !databases.is_empty() {
            jobs.push(job(
                "postgres",
                "/metrics",
                targets(databases, POSTGRES_EXPORTER_PORT),
            ));
        }
        // Not Patroni's own /metrics: Debian 12's Patroni (3.0.2) prints `None` as a replica's
        // timeline there, which Prometheus refuses whole; PostgreSQL's exporter covers the members.
        let brokers = inventory.broker_hosts();
        if !brokers.is_empty() {
            jobs.push(job(
                "rabbitmq",
                "/metrics",
                targets(brokers.clone(), RABBITMQ_METRICS_PORT),
            ));
            // Per queue, for the queue alerts: each node reports the queues it leads.
            let mut queues = job(
                "rabbitmq-queues",
                "/metrics/detailed",
                targets(brokers, RABBITMQ_METRICS_PORT),
            );
            queues.params = vec![
                ("family".to_owned(), "queue_coarse_metrics".to_owned()),
                ("vhost".to_owned(), inventory.settings.vhost.clone()),
            ];
            jobs.push(queues);
        }
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("interval", INTERVAL);
        context.insert("rules", PROMETHEUS_RULES);
        context.insert("jobs", &jobs);
        context.insert("queue", &inventory.settings.queue);
        context.insert(
            "dead_letter_queue",
            &dead_letter_queue_name(&inventory.settings.queue),
        );
        let reload = vec![Handler::Reload(Component::Monitoring.unit().to_owned())];
        let mut files = if tls_scrapes {
            self.tls_files(host, &tls_paths, "prometheus", true, &reload)?
        } else {
            Vec::new()
        };
        files.extend([
            text_file(
                PROMETHEUS_CONFIG,
                self.render("prometheus/prometheus.yml", host, &context)?,
                0o644,
                "root",
                reload.clone(),
            ),
            text_file(
                PROMETHEUS_RULES,
                self.render("prometheus/platform-alerts.yml", host, &context)?,
                0o644,
                "root",
                reload,
            ),
        ]);
        Ok(files)
    }
}
