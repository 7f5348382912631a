//! RabbitMQ on a host (`templates/rabbitmq/`, the epmd socket drop-in): its listeners, plugins
//! and Erlang ports, and the vhost, user and permissions of the services that use the broker.

use tera::Context;

use super::inventory::{is_ip_address, Host};
use super::platform::Component;
use super::services::AMQP_PORT;
use super::tls::{TlsPaths, AMQPS_PORT};
use super::{text_file, RenderError, Renderer};
use crate::desired::{DesiredFile, FileContent, Handler, RabbitMqCluster, RabbitMqState};

/// Erlang's port mapper and RabbitMQ's inter-node (distribution) port: on a single node only
/// `rabbitmqctl` on the broker's own host uses them; the nodes of a cluster use them between
/// each other.
pub const EPMD_PORT: u16 = 4369;
pub const ERLANG_DISTRIBUTION_PORT: u16 = AMQP_PORT + 20_000;

/// Debian's and Ubuntu's rabbitmq-server starts epmd through this socket unit of erlang-base.
pub const EPMD_SOCKET: &str = "epmd.socket";

/// The `.env` variable holding a cluster's Erlang cookie (a `_PASSWORD`: a secret).
pub const CLUSTER_COOKIE_VARIABLE: &str = "RABBITMQ_CLUSTER_PASSWORD";

/// Where the broker (and `rabbitmqctl`, which Debian runs as the `rabbitmq` user) reads it.
pub const COOKIE_PATH: &str = "/var/lib/rabbitmq/.erlang.cookie";

/// Erlang's own host table, so that the nodes' names resolve without touching `/etc/hosts`.
pub const INETRC_PATH: &str = "/etc/rabbitmq/erl_inetrc";

/// The TLS options of Erlang's distribution between a cluster's nodes (`-ssl_dist_optfile`).
pub const DIST_TLS_PATH: &str = "/etc/rabbitmq/inter_node_tls.config";

/// The name of the RabbitMQ node on `host`: what Debian's package names it by default when the
/// machine's host name is its inventory name, as on the Vagrant VMs and the lab's machines.
pub fn node_name(host: &Host) -> String {
    format!("rabbit@{}", host.name)
}

impl Renderer<'_> {
    /// The broker's state and files on `host`.
    pub fn rabbitmq(&self, host: &Host) -> Result<(RabbitMqState, Vec<DesiredFile>), RenderError> {
        let broker = self.env.broker();
        let nodes: Vec<&Host> = self.inventory.broker_hosts();
        let cluster = self.inventory.broker_cluster().then(|| RabbitMqCluster {
            node: node_name(host),
            seed: node_name(nodes[0]),
            nodes: nodes.iter().map(|node| node_name(node)).collect(),
        });
        let mut files = self.rabbitmq_files(host, cluster.as_ref())?;
        if cluster.is_some() {
            files.push(self.cluster_cookie()?);
        }
        let state = RabbitMqState {
            vhost: self.inventory.settings.vhost.clone(),
            user: broker.user,
            password: broker.password,
            permissions: (".*".to_owned(), ".*".to_owned(), ".*".to_owned()),
            remove_guest: true,
            tags: vec!["management".to_owned()],
            cluster,
        };
        Ok((state, files))
    }

    /// The Erlang cookie every node of the cluster shares, readable by the broker alone.
    fn cluster_cookie(&self) -> Result<DesiredFile, RenderError> {
        let problem = |problem| RenderError::ClusterCookie {
            path: self.env.path().to_owned(),
            variable: CLUSTER_COOKIE_VARIABLE,
            problem,
        };
        let cookie = self
            .env
            .secret(CLUSTER_COOKIE_VARIABLE)
            .ok_or_else(|| problem("is missing"))?;
        let value = cookie.expose();
        if value.len() < 20 || value.len() > 255 {
            return Err(problem("must be 20 to 255 characters long"));
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(problem("may hold only letters, digits, `_` and `-`"));
        }
        Ok(DesiredFile {
            path: COOKIE_PATH.to_owned(),
            content: FileContent::SecretText(cookie.clone()),
            mode: 0o400,
            owner: "rabbitmq".to_owned(),
            group: "rabbitmq".to_owned(),
            on_change: vec![Handler::Restart(Component::Rabbitmq.unit().to_owned())],
        })
    }

    fn rabbitmq_files(
        &self,
        host: &Host,
        cluster: Option<&RabbitMqCluster>,
    ) -> Result<Vec<DesiredFile>, RenderError> {
        // Plain AMQP on loopback alone; AMQPS on the host's address when a client is elsewhere.
        // A cluster's nodes speak TLS to each other too, with the same certificate.
        let listeners = vec![format!("127.0.0.1:{AMQP_PORT}")];
        let tls = self.rabbitmq_tls(host);
        let identity = tls || cluster.is_some();
        let tls_paths = TlsPaths::of("rabbitmq");
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("listeners", &listeners);
        context.insert("tls", &tls_paths);
        if tls {
            let listener = if is_ip_address(host.address()) {
                format!("{}:{AMQPS_PORT}", host.address())
            } else {
                format!("0.0.0.0:{AMQPS_PORT}")
            };
            context.insert("tls_listener", &listener);
        }
        // All interfaces: Vagrant forwards the host's port to the VM's NAT interface.
        context.insert("management_ip", "0.0.0.0");
        context.insert("epmd_port", &EPMD_PORT);
        context.insert("distribution_port", &ERLANG_DISTRIBUTION_PORT);
        // RabbitMQ's own exporter, for the monitoring host.
        context.insert("prometheus", &self.inventory.monitoring_host().is_some());
        if let Some(cluster) = cluster {
            context.insert("node", &cluster.node);
            context.insert("nodes", &cluster.nodes);
            context.insert("inetrc", INETRC_PATH);
            context.insert("dist_tls", DIST_TLS_PATH);
        }
        let restart = vec![Handler::Restart(Component::Rabbitmq.unit().to_owned())];
        let mut files = if identity {
            self.tls_files(host, &tls_paths, "rabbitmq", true, &restart)?
        } else {
            Vec::new()
        };
        files.extend([
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
                restart.clone(),
            ),
        ]);
        if cluster.is_some() {
            let nodes: Vec<(String, String)> = self
                .inventory
                .broker_hosts()
                .iter()
                .map(|node| (node.name.clone(), erlang_address(node.address())))
                .collect();
            context.insert("hosts", &nodes);
            files.push(text_file(
                INETRC_PATH,
                self.render("rabbitmq/erl_inetrc", host, &context)?,
                0o644,
                "root",
                restart.clone(),
            ));
            files.push(text_file(
                DIST_TLS_PATH,
                self.render("rabbitmq/inter_node_tls.config", host, &context)?,
                0o644,
                "root",
                restart,
            ));
        }
        Ok(files)
    }
}

/// An IP address as an Erlang tuple for `erl_inetrc`: `{10,0,0,1}`, or eight hexadecimal groups
/// for IPv6. A name that is not an address is left to the system's resolver (`native`).
fn erlang_address(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("{{{a},{b},{c},{d}}}")
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            let groups: Vec<String> = ip.segments().iter().map(|g| format!("16#{g:x}")).collect();
            format!("{{{}}}", groups.join(","))
        }
        Err(_) => String::new(),
    }
}
