//! systemd's sandbox for the daemons installed from Debian's packages (`templates/hardening/`):
//! a drop-in per unit with the options each was seen to tolerate, as the platform's own units
//! have in `systemd/hardening.inc`. Prometheus gets none: Debian's unit is hardened already.

use tera::Context;

use super::inventory::Host;
use super::keepalived::KEEPALIVED_UNIT;
use super::monitoring::{NODE_EXPORTER, POSTGRES_EXPORTER};
use super::patroni::HAPROXY_UNIT;
use super::platform::Component;
use super::{text_file, RenderError, Renderer};
use crate::desired::{DesiredFile, Handler};

/// A hardened daemon: its template, the unit whose drop-in folder it goes to, and the unit its
/// change restarts (`None`: it takes effect at the next start).
struct Hardened {
    template: &'static str,
    unit_file: &'static str,
    restart: Option<&'static str>,
}

const fn hardened(
    template: &'static str,
    unit_file: &'static str,
    restart: Option<&'static str>,
) -> Hardened {
    Hardened {
        template,
        unit_file,
        restart,
    }
}

impl Renderer<'_> {
    /// The drop-ins of the packaged daemons on `host`, given its host units (HAProxy, exporters).
    pub fn hardening(
        &self,
        host: &Host,
        host_units: &[String],
    ) -> Result<Vec<DesiredFile>, RenderError> {
        let mut daemons = Vec::new();
        for component in Component::ALL.into_iter().filter(|c| host.has(*c)) {
            daemons.push(match component {
                // Every cluster of Debian's (postgresql@15-main, …); restarting postgresql.service
                // restarts them (PartOf).
                Component::Postgres => hardened("postgresql", "postgresql@", Some("postgresql")),
                Component::Rabbitmq => hardened(
                    "rabbitmq-server",
                    "rabbitmq-server",
                    Some("rabbitmq-server"),
                ),
                Component::Etcd => hardened("etcd", "etcd", Some("etcd")),
                // Not restarted for it: that would stop the primary. A new member starts with it;
                // a running one takes it at its next restart.
                Component::Patroni => hardened("patroni", "patroni", None),
                Component::Monitoring => continue,
            });
        }
        for (unit, daemon) in [
            (
                HAPROXY_UNIT,
                hardened("haproxy", "haproxy", Some("haproxy")),
            ),
            (
                KEEPALIVED_UNIT,
                hardened(KEEPALIVED_UNIT, KEEPALIVED_UNIT, Some(KEEPALIVED_UNIT)),
            ),
            (
                NODE_EXPORTER,
                hardened(NODE_EXPORTER, NODE_EXPORTER, Some(NODE_EXPORTER)),
            ),
            (
                POSTGRES_EXPORTER,
                hardened(
                    POSTGRES_EXPORTER,
                    POSTGRES_EXPORTER,
                    Some(POSTGRES_EXPORTER),
                ),
            ),
        ] {
            if host_units.iter().any(|known| known == unit) {
                daemons.push(daemon);
            }
        }
        daemons
            .into_iter()
            .map(|daemon| {
                let mut context = Context::new();
                context.insert("host", &host.name);
                context.insert("unit", daemon.unit_file);
                let mut handlers = vec![Handler::DaemonReload];
                handlers.extend(daemon.restart.map(|unit| Handler::Restart(unit.to_owned())));
                Ok(text_file(
                    format!(
                        "/etc/systemd/system/{}.service.d/provision-hardening.conf",
                        daemon.unit_file
                    ),
                    self.render(
                        &format!("hardening/{}.conf", daemon.template),
                        host,
                        &context,
                    )?,
                    0o644,
                    "root",
                    handlers,
                ))
            })
            .collect()
    }
}
