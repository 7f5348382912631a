//! The platform's services on a host (`templates/systemd/`, `templates/env/`): each one's unit,
//! env file, binary and health checks, all read from its description in `platform.toml`.

use serde::Serialize;
use tera::Context;

use super::binaries::BinarySet;
use super::inventory::Host;
use super::patroni::{HAPROXY_PORT, HAPROXY_UNIT};
use super::platform::{Component, ServiceDescription};
use super::tls::{TlsPaths, AMQPS_PORT};
use super::{percent_encode, reach, text_file, RenderError, Renderer};
use crate::desired::{
    ClientTls, DesiredBinary, DesiredFile, FileContent, Handler, Secret, ServiceSpec,
};
use crate::render::env_file::{DatabaseCredentials, EnvFile};

/// PostgreSQL's and RabbitMQ's ports on the hosts (the packages' defaults).
pub const POSTGRES_PORT: u16 = 5432;
pub const AMQP_PORT: u16 = 5672;

/// The unit template of services that have none of their own (`systemd/<name>.service`).
pub const UNIT_TEMPLATE: &str = "systemd/service.service";

/// The socket unit template of the socket-activated services.
pub const SOCKET_TEMPLATE: &str = "systemd/service.socket";

/// The `.env` variable of the secret signing the gateway's bearer tokens: when set, the writing
/// methods need a token (`AUTH_JWT_SECRET` of the gateway).
pub const JWT_SECRET_VARIABLE: &str = "GATEWAY_JWT_SECRET";

/// The `.env` variable naming an RSA public key file (PEM, relative to the env file's folder):
/// when set, the public services check RS256 bearer tokens with it (`AUTH_JWT_PUBLIC_KEY_FILE`),
/// instead of the shared secret.
pub const JWT_PUBLIC_KEY_VARIABLE: &str = "GATEWAY_JWT_PUBLIC_KEY_FILE";

/// Where a public service's copy of that key goes: `/etc/<svc>/jwt-public.pem`.
pub fn jwt_public_key_path(service: &str) -> String {
    format!("/etc/{service}/jwt-public.pem")
}

/// The RSA public key `GATEWAY_JWT_PUBLIC_KEY_FILE` names, when set: read from its file (a
/// path relative to the env file's folder) and checked to be a PEM public key; never beside
/// `GATEWAY_JWT_SECRET`. Read once, when the renderer is made.
pub fn read_jwt_public_key(env: &EnvFile) -> Result<Option<String>, RenderError> {
    let Some(file) = env.get(JWT_PUBLIC_KEY_VARIABLE) else {
        return Ok(None);
    };
    let problem = |problem: String| RenderError::JwtPublicKey {
        path: env.path().to_owned(),
        variable: JWT_PUBLIC_KEY_VARIABLE,
        problem,
    };
    if env.secret(JWT_SECRET_VARIABLE).is_some() {
        return Err(problem(format!(
            "and {JWT_SECRET_VARIABLE} are both set: tokens are checked with one or the other"
        )));
    }
    let folder = env.path().parent().unwrap_or(std::path::Path::new("."));
    let path = folder.join(file);
    let pem = std::fs::read_to_string(&path)
        .map_err(|error| problem(format!("{}: {error}", path.display())))?;
    let body = pem.trim();
    let is_public_key = ["PUBLIC KEY", "RSA PUBLIC KEY"].iter().any(|label| {
        body.starts_with(&format!("-----BEGIN {label}-----"))
            && body.ends_with(&format!("-----END {label}-----"))
    });
    if !is_public_key {
        return Err(problem(format!(
            "{} is not a PEM public key (BEGIN PUBLIC KEY); the private key stays with whoever signs the tokens",
            path.display()
        )));
    }
    Ok(Some(pem))
}

/// `/etc/<svc>/<svc>.env`.
pub fn env_file_path(service: &str) -> String {
    format!("/etc/{service}/{service}.env")
}

/// `/usr/local/bin/<svc>`.
pub fn binary_path(service: &str) -> String {
    format!("/usr/local/bin/{service}")
}

/// The checked binary of `service`, to push to `binary_path`.
pub fn binary(
    binaries: &BinarySet,
    service: &ServiceDescription,
) -> Result<DesiredBinary, RenderError> {
    let binary = binaries
        .get(&service.name)
        .ok_or_else(|| RenderError::MissingBinary {
            service: service.name.clone(),
        })?;
    Ok(DesiredBinary {
        service: service.name.clone(),
        local_path: binary.path.clone(),
        remote_path: binary_path(&service.name),
        sha256: binary.sha256.clone(),
        arch: binary.arch,
    })
}

/// `/etc/systemd/system/<svc>.socket`.
pub fn socket_path(service: &str) -> String {
    format!("/etc/systemd/system/{service}.socket")
}

#[derive(Serialize)]
struct UnitContext<'a> {
    host: &'a str,
    service: &'a str,
    summary: &'a str,
    user: &'a str,
    env_file: String,
    binary: String,
    after: Vec<String>,
    /// Started by its socket unit, which holds the listening socket across restarts.
    socket: bool,
}

#[derive(Serialize)]
struct SocketContext<'a> {
    host: &'a str,
    service: &'a str,
    summary: &'a str,
    listen_addr: String,
}

impl Renderer<'_> {
    /// Where `service` listens: every interface when it is public, called from another host, or
    /// scraped there by the monitoring host from another host, else loopback only.
    fn listen_ip(&self, host: &Host, service: &ServiceDescription) -> &'static str {
        let called_from_elsewhere = self
            .inventory
            .platform
            .callers_of(&service.name)
            .flat_map(|caller| self.inventory.hosts_running(&caller.name))
            .any(|client| client.name != host.name);
        let scraped_here = service.metrics.is_some()
            && service.metrics_port.is_none()
            && self.scraped_from_elsewhere(host);
        if service.public || called_from_elsewhere || scraped_here {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        }
    }

    /// `host:port` where `service` listens on `host`.
    fn listen_addr(&self, host: &Host, service: &ServiceDescription) -> String {
        format!(
            "{}:{}",
            self.listen_ip(host, service),
            self.inventory.port_of(service)
        )
    }

    /// Whether systemd holds `service`'s listening socket: when it is public or another service
    /// calls it, so that its restarts in a rolling deploy refuse no connection (they wait in the
    /// socket's queue). A service nobody calls (billing: only its health is asked) is not: a
    /// connection to a socket would start it again after a deliberate `systemctl stop`.
    fn socket_activated(&self, service: &ServiceDescription) -> bool {
        service.public
            || self
                .inventory
                .platform
                .callers_of(&service.name)
                .any(|caller| self.inventory.hosts_running(&caller.name).next().is_some())
    }

    /// What plan/apply and status need to know of `service` on `host`. A service that serves
    /// HTTPS is asked at its own address (which its certificate names), with its own
    /// certificate as the client's.
    pub fn spec(&self, host: &Host, service: &ServiceDescription) -> ServiceSpec {
        let base = self.service_base_url(host, host, service);
        let tls = self.serves_tls(service).then(|| {
            let paths = TlsPaths::of(&service.name);
            ClientTls {
                ca_file: paths.ca_file,
                cert_file: paths.cert_file,
                key_file: paths.key_file,
            }
        });
        ServiceSpec {
            unit: service.name.clone(),
            health_url: format!("{base}{}", service.health),
            ready_url: format!("{base}{}", service.ready),
            socket: self
                .socket_activated(service)
                .then(|| socket_path(&service.name)),
            tls,
        }
    }

    /// The TLS files `service` needs on `host`: the CA when it reaches anything over TLS, and
    /// the host's certificate and key when it serves HTTPS or calls a service that does (which
    /// asks for its certificate). A change restarts it.
    pub fn service_tls_files(
        &self,
        host: &Host,
        service: &ServiceDescription,
    ) -> Result<Vec<DesiredFile>, RenderError> {
        let identity = self.serves_tls(service) || self.calls_tls(service);
        let ca = identity
            || (service.broker && self.amqp_tls(host))
            || (service.database.is_some() && self.database_tls(host));
        if !ca {
            return Ok(Vec::new());
        }
        self.tls_files(
            host,
            &TlsPaths::of(&service.name),
            &service.name,
            identity,
            &[Handler::Restart(service.name.clone())],
        )
    }

    /// Whether `service` calls a service that serves HTTPS.
    fn calls_tls(&self, service: &ServiceDescription) -> bool {
        service
            .calls
            .iter()
            .filter_map(|callee| self.inventory.platform.service(callee))
            .any(|callee| self.serves_tls(callee))
    }

    /// Whether a broker client on `host` reaches a node on another host (over AMQPS, then).
    fn amqp_tls(&self, host: &Host) -> bool {
        self.inventory
            .broker_hosts()
            .iter()
            .any(|node| node.name != host.name)
    }

    /// Whether a database client on `host` speaks TLS to its PostgreSQL: on another host, or
    /// in the Patroni cluster (HAProxy on loopback passes the bytes on to a member).
    fn database_tls(&self, host: &Host) -> bool {
        self.inventory.database_cluster()
            || self
                .inventory
                .database_host_of(host)
                .is_some_and(|server| server.name != host.name)
    }

    /// `templates/systemd/service.socket` for a socket-activated service; `None` for the others.
    /// Rewriting it restarts the service, which then rebinds the socket (see apply).
    pub fn socket(
        &self,
        host: &Host,
        service: &ServiceDescription,
    ) -> Result<Option<DesiredFile>, RenderError> {
        if !self.socket_activated(service) {
            return Ok(None);
        }
        let context = SocketContext {
            host: &host.name,
            service: &service.name,
            summary: &service.summary,
            listen_addr: self.listen_addr(host, service),
        };
        let text = self.render_serialized(SOCKET_TEMPLATE, host, &context)?;
        Ok(Some(text_file(
            socket_path(&service.name),
            text,
            0o644,
            "root",
            vec![
                Handler::DaemonReload,
                Handler::Restart(service.name.clone()),
            ],
        )))
    }

    /// The units `service` starts after on `host`: the services it calls there, its own socket
    /// when it has one, then PostgreSQL when its database is local, then RabbitMQ when it uses the
    /// broker and the broker is local.
    fn after(&self, host: &Host, service: &ServiceDescription) -> Vec<String> {
        let inventory = self.inventory;
        let mut after: Vec<String> = service
            .calls
            .iter()
            .filter(|callee| host.runs(callee))
            .map(|callee| format!("{callee}.service"))
            .collect();
        if self.socket_activated(service) {
            after.push(format!("{}.socket", service.name));
        }
        let database_local = inventory
            .database_host_of(host)
            .is_some_and(|db| db.name == host.name);
        if service.database.is_some() && database_local {
            after.push(format!("{}.service", Component::Postgres.unit()));
        }
        if service.database.is_some() && inventory.database_cluster() {
            after.push(format!("{HAPROXY_UNIT}.service"));
        }
        if service.broker && host.has(Component::Rabbitmq) {
            after.push(format!("{}.service", Component::Rabbitmq.unit()));
        }
        after
    }

    pub fn unit(
        &self,
        host: &Host,
        service: &ServiceDescription,
    ) -> Result<DesiredFile, RenderError> {
        let name = service.name.as_str();
        let context = UnitContext {
            host: &host.name,
            service: name,
            summary: &service.summary,
            user: name,
            env_file: env_file_path(name),
            binary: binary_path(name),
            after: self.after(host, service),
            socket: self.socket_activated(service),
        };
        let own = format!("systemd/{name}.service");
        let template = if self.has_template(&own) {
            own.as_str()
        } else {
            UNIT_TEMPLATE
        };
        let text = self.render_serialized(template, host, &context)?;
        Ok(text_file(
            format!("/etc/systemd/system/{name}.service"),
            text,
            0o644,
            "root",
            vec![Handler::DaemonReload, Handler::Restart(name.to_owned())],
        ))
    }

    /// `templates/env/<name>.env`, given: `host`, `rust_log`, `queue`, `listen_addr`, `tls` (its
    /// TLS files: `ca_file`, `cert_file`, `key_file`), `serves_tls`, and, as the description
    /// says, `database_url`, `amqp_url` and `amqp_tls`, `<callee>_urls` and `<callee>_tls`.
    pub fn env_file(
        &self,
        host: &Host,
        service: &ServiceDescription,
    ) -> Result<DesiredFile, RenderError> {
        let inventory = self.inventory;
        let settings = &inventory.settings;
        let name = service.name.as_str();
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("rust_log", &settings.rust_log);
        context.insert("log_format", &settings.log_format);
        if let Some(secret) = self.jwt_secret()? {
            context.insert("auth_jwt_secret", secret.expose());
        }
        let public_key = service.public && self.jwt_public_key.is_some();
        context.insert(
            "auth_jwt_public_key_file",
            &public_key.then(|| jwt_public_key_path(name)),
        );
        context.insert("rate_limit_per_second", &settings.rate_limit_per_second);
        context.insert("rate_limit_burst", &settings.rate_limit_burst);
        context.insert("queue", &settings.queue);
        context.insert("listen_addr", &self.listen_addr(host, service));
        context.insert(
            "metrics_listen_addr",
            &self.metrics_listen_addr(host, service),
        );
        if let Some(credentials) = self.database_credentials(service) {
            context.insert(
                "database_url",
                self.database_url(host, name, &credentials).expose(),
            );
        }
        if service.broker {
            context.insert("amqp_url", self.amqp_url(host).expose());
            context.insert("amqp_tls", &self.amqp_tls(host));
        }
        context.insert("tls", &TlsPaths::of(name));
        context.insert("serves_tls", &self.serves_tls(service));
        for callee in &service.calls {
            let Some(callee) = inventory.platform.service(callee) else {
                continue;
            };
            let urls: Vec<String> = inventory
                .hosts_running(&callee.name)
                .map(|server| self.service_base_url(host, server, callee))
                .collect();
            context.insert(format!("{}_urls", callee.name), &urls);
            context.insert(format!("{}_tls", callee.name), &self.serves_tls(callee));
        }
        let text = self.render(&format!("env/{name}.env"), host, &context)?;
        Ok(DesiredFile {
            path: env_file_path(name),
            content: FileContent::SecretText(Secret::new(text)),
            mode: 0o600,
            owner: "root".to_owned(),
            group: "root".to_owned(),
            on_change: vec![Handler::Restart(name.to_owned())],
        })
    }

    /// `GATEWAY_JWT_SECRET` of `.env`, when set: 32 to 512 printable characters, none that an
    /// env file would take for quoting or expansion.
    fn jwt_secret(&self) -> Result<Option<&Secret>, RenderError> {
        let Some(secret) = self.env.secret(JWT_SECRET_VARIABLE) else {
            return Ok(None);
        };
        let problem = |problem| RenderError::JwtSecret {
            path: self.env.path().to_owned(),
            variable: JWT_SECRET_VARIABLE,
            problem,
        };
        let value = secret.expose();
        if value.len() < 32 || value.len() > 512 {
            return Err(problem("must be 32 to 512 characters long"));
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '$' | '`'))
        {
            return Err(problem(
                "may hold only printable ASCII, without quotes, `\\`, `$` or a backtick",
            ));
        }
        Ok(Some(secret))
    }

    /// The public key's copy on the host of a public service, when `.env` names one.
    pub fn jwt_public_key_file(
        &self,
        service: &ServiceDescription,
    ) -> Result<Option<DesiredFile>, RenderError> {
        if !service.public {
            return Ok(None);
        }
        Ok(self.jwt_public_key.as_ref().map(|pem| {
            text_file(
                jwt_public_key_path(&service.name),
                pem.clone(),
                0o644,
                "root",
                vec![Handler::Restart(service.name.clone())],
            )
        }))
    }

    /// The database `service` owns, with its credentials from `.env`.
    pub fn database_credentials(
        &self,
        service: &ServiceDescription,
    ) -> Option<DatabaseCredentials> {
        service
            .database
            .as_deref()
            .map(|prefix| self.env.database(prefix))
    }

    /// Its database on the host's PostgreSQL, or, when the databases live in the Patroni
    /// cluster, through HAProxy on this host, which leads to the primary.
    fn database_url(&self, host: &Host, service: &str, database: &DatabaseCredentials) -> Secret {
        let server = if self.inventory.database_cluster() {
            format!("127.0.0.1:{HAPROXY_PORT}")
        } else {
            let server = self.inventory.database_host_of(host).unwrap_or(host);
            format!("{}:{POSTGRES_PORT}", reach(host, server))
        };
        // Over TLS, the server's certificate must be the platform CA's and name the address
        // connected to: a member's names 127.0.0.1, where HAProxy listens (`pki`).
        let tls = if self.database_tls(host) {
            let ca_file = TlsPaths::of(service).ca_file;
            format!(
                "?sslmode=verify-full&sslrootcert={}",
                percent_encode(&ca_file)
            )
        } else {
            // Its own PostgreSQL, on loopback: plain, said outright (sqlx's default, `prefer`,
            // would ask for TLS first).
            "?sslmode=disable".to_owned()
        };
        Secret::new(format!(
            "postgres://{}:{}@{server}/{}{tls}",
            percent_encode(&database.user),
            percent_encode(database.password.expose()),
            percent_encode(&database.name),
        ))
    }

    /// One URL per broker node, comma-separated: the services connect to the first and move
    /// on to the next when it fails. The host's own node comes first; the other clients start
    /// each at the next node, in the inventory's order, so that losing one node's machine costs
    /// a reconnection to as few of them as possible (two gateways never share their first node
    /// while there are two nodes or more).
    fn amqp_url(&self, host: &Host) -> Secret {
        let broker = self.env.broker();
        let mut nodes = self.inventory.broker_hosts();
        let first = nodes
            .iter()
            .position(|node| node.name == host.name)
            .unwrap_or_else(|| {
                let place = self
                    .inventory
                    .hosts_running_any(|service| service.broker)
                    .filter(|client| !client.has(Component::Rabbitmq))
                    .position(|client| client.name == host.name);
                place.unwrap_or(0) % nodes.len().max(1)
            });
        nodes.rotate_left(first);
        let urls: Vec<String> = nodes
            .into_iter()
            .map(|node| {
                // A node on another host over AMQPS, at the address its certificate names.
                let (scheme, port) = if node.name == host.name {
                    ("amqp", AMQP_PORT)
                } else {
                    ("amqps", AMQPS_PORT)
                };
                format!(
                    "{scheme}://{}:{}@{}:{port}/{}",
                    percent_encode(&broker.user),
                    percent_encode(broker.password.expose()),
                    reach(host, node),
                    percent_encode(&self.inventory.settings.vhost),
                )
            })
            .collect();
        Secret::new(urls.join(","))
    }
}
