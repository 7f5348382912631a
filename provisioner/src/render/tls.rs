//! TLS between the platform's machines: which links are encrypted, and the files each end needs.
//!
//! A link is encrypted when its two ends are on different hosts; loopback stays plain:
//! - RabbitMQ with a client on another host listens for AMQPS on its address (5671), and for
//!   plain AMQP on loopback alone; remote clients connect with `amqps://`;
//! - PostgreSQL with a client on another host turns `ssl` on, and its remote `pg_hba` lines
//!   become `hostssl`; remote clients connect with `sslmode=verify-full`;
//! - a Patroni cluster's clients reach the primary through HAProxy on their own host's loopback,
//!   which passes the bytes on to a member: they speak TLS through it, with `sslmode=verify-full`
//!   for 127.0.0.1, which every member's certificate names (and no other host's);
//! - a service another host calls (inventory) serves HTTPS on every host, asking its callers for
//!   a certificate of the platform CA; its callers connect with `https://` to its address, even
//!   on the same host, so the certificate's names always match;
//! - Prometheus scrapes such a service over HTTPS with its own host's certificate;
//! - the members of a cluster speak TLS to each other: RabbitMQ's nodes (Erlang's distribution),
//!   etcd's, Patroni's (replication, `pg_rewind`, the REST API, and Patroni to etcd).
//!
//! Each user of TLS gets a folder of its own, `/etc/platform-tls/<user>/`, with the CA (`ca.crt`, 0644) and,
//! when it proves who it is, the host's certificate (`host.crt`, 0644) and key (`host.key`,
//! 0600, owned by that user alone); a change restarts or reloads that user alone.

use super::inventory::{Host, Inventory};
use super::platform::ServiceDescription;
use super::{text_file, url_host, RenderError, Renderer};
use crate::desired::{DesiredFile, FileContent, Handler};
use crate::pki::Subject;

/// RabbitMQ's AMQPS port (the IANA one).
pub const AMQPS_PORT: u16 = 5671;

/// Where the files of one user of TLS are.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsPaths {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

/// The name a Patroni member's certificate carries beside its own: its clients connect to
/// HAProxy on their loopback, and HAProxy leads them to whichever member is the primary.
pub const CLUSTER_MEMBER_NAME: &str = "127.0.0.1";

/// Every host's certificate to be: its inventory name and address, and for a Patroni member
/// [`CLUSTER_MEMBER_NAME`] too.
pub fn certificate_subjects(inventory: &Inventory) -> Vec<Subject> {
    let members = inventory.patroni_hosts();
    inventory
        .hosts
        .iter()
        .map(|host| {
            let subject = Subject::of(&host.name, host.address());
            if members.iter().any(|member| member.name == host.name) {
                subject.also(CLUSTER_MEMBER_NAME)
            } else {
                subject
            }
        })
        .collect()
}

/// The folder of every user's TLS files, one sub-folder per user.
pub const TLS_DIR: &str = "/etc/platform-tls";

impl TlsPaths {
    /// The files of the system user `user` (a service, `rabbitmq`, `postgres`, `prometheus`):
    /// `/etc/platform-tls/<user>/`.
    pub fn of(user: &str) -> Self {
        Self {
            ca_file: format!("{TLS_DIR}/{user}/ca.crt"),
            cert_file: format!("{TLS_DIR}/{user}/host.crt"),
            key_file: format!("{TLS_DIR}/{user}/host.key"),
        }
    }
}

impl Renderer<'_> {
    /// Whether the broker on `host` has a client on another host: it then speaks AMQPS there.
    pub fn rabbitmq_tls(&self, host: &Host) -> bool {
        self.inventory
            .hosts_running_any(|service| service.broker)
            .any(|client| client.name != host.name)
    }

    /// Whether `service` serves HTTPS: when a host running one of its callers is not a host
    /// running it. Then it does so on every host, so that every caller speaks to every instance
    /// alike.
    pub fn serves_tls(&self, service: &ServiceDescription) -> bool {
        let inventory = self.inventory;
        inventory
            .platform
            .callers_of(&service.name)
            .flat_map(|caller| inventory.hosts_running(&caller.name))
            .any(|caller| {
                inventory
                    .hosts_running(&service.name)
                    .any(|server| server.name != caller.name)
            })
    }

    /// How `client` reaches `service` on `server`: `https://` and the server's address when the
    /// service serves TLS, else `http://` and loopback on the same host.
    pub fn service_base_url(
        &self,
        client: &Host,
        server: &Host,
        service: &ServiceDescription,
    ) -> String {
        let port = self.inventory.port_of(service);
        if self.serves_tls(service) {
            format!("https://{}:{port}", url_host(server.address()))
        } else {
            format!("http://{}:{port}", super::reach(client, server))
        }
    }

    /// The TLS files of one user on `host`: the CA, and with `identity` the host's certificate
    /// and its key, owned by `owner` and readable by it alone. Each change runs `on_change`.
    pub fn tls_files(
        &self,
        host: &Host,
        paths: &TlsPaths,
        owner: &str,
        identity: bool,
        on_change: &[Handler],
    ) -> Result<Vec<DesiredFile>, RenderError> {
        let mut files = vec![text_file(
            paths.ca_file.clone(),
            self.pki.ca_pem().to_owned(),
            0o644,
            "root",
            on_change.to_vec(),
        )];
        if identity {
            let certificate =
                self.pki
                    .host(&host.name)
                    .ok_or_else(|| RenderError::MissingCertificate {
                        host: host.name.clone(),
                    })?;
            files.push(text_file(
                paths.cert_file.clone(),
                certificate.cert_pem.clone(),
                0o644,
                "root",
                on_change.to_vec(),
            ));
            files.push(DesiredFile {
                path: paths.key_file.clone(),
                content: FileContent::SecretText(certificate.key_pem.clone()),
                mode: 0o600,
                owner: owner.to_owned(),
                group: owner.to_owned(),
                on_change: on_change.to_vec(),
            });
        }
        Ok(files)
    }
}
