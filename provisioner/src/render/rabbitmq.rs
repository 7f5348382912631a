//! RabbitMQ on a host (`templates/rabbitmq/`, the epmd socket drop-in): its listeners, plugins
//! and Erlang ports, and the vhost, user and permissions of the services that use the broker.

use tera::Context;

use super::inventory::{is_ip_address, Host};
use super::platform::Component;
use super::services::AMQP_PORT;
use super::{text_file, RenderError, Renderer};
use crate::desired::{DesiredFile, Handler, RabbitMqState};

/// Erlang's port mapper and RabbitMQ's inter-node (distribution) port: only `rabbitmqctl` on
/// the broker's own host uses them, since the broker is a single node.
pub const EPMD_PORT: u16 = 4369;
pub const ERLANG_DISTRIBUTION_PORT: u16 = AMQP_PORT + 20_000;

/// Debian's and Ubuntu's rabbitmq-server starts epmd through this socket unit of erlang-base.
pub const EPMD_SOCKET: &str = "epmd.socket";

impl Renderer<'_> {
    /// The broker's state and files on `host`.
    pub fn rabbitmq(&self, host: &Host) -> Result<(RabbitMqState, Vec<DesiredFile>), RenderError> {
        let broker = self.env.broker();
        let state = RabbitMqState {
            vhost: self.inventory.settings.vhost.clone(),
            user: broker.user,
            password: broker.password,
            permissions: (".*".to_owned(), ".*".to_owned(), ".*".to_owned()),
            remove_guest: true,
            tags: vec!["management".to_owned()],
        };
        Ok((state, self.rabbitmq_files(host)?))
    }

    fn rabbitmq_files(&self, host: &Host) -> Result<Vec<DesiredFile>, RenderError> {
        let remote_clients = self
            .inventory
            .hosts_running_any(|service| service.broker)
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
        let restart = vec![Handler::Restart(Component::Rabbitmq.unit().to_owned())];
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
