//! PostgreSQL on a host (`templates/postgresql/`): one database per service whose database lives
//! here, owned by its role, reachable only from the hosts running that service.

use std::collections::BTreeSet;

use serde::Serialize;
use tera::Context;

use super::inventory::{is_ip_address, Host};
use super::platform::Component;
use super::tls::TlsPaths;
use super::{hba_address, text_file, RenderError, Renderer};
use crate::desired::{
    DesiredFile, Handler, PostgresDatabase, PostgresRole, PostgresState, PG_VERSION_PLACEHOLDER,
};

#[derive(Debug, Serialize)]
pub struct HbaRule {
    /// `host`, or `hostssl` for a client on another host (TLS only).
    kind: &'static str,
    database: String,
    user: String,
    address: String,
}

/// The databases a PostgreSQL holds and who may reach each.
#[derive(Debug)]
pub struct DatabaseObjects {
    pub state: PostgresState,
    /// One `host` line per database and client host (loopback for a client on the server).
    pub rules: Vec<HbaRule>,
    /// Whether a client runs on another host than the server.
    pub remote_clients: bool,
}

impl Renderer<'_> {
    /// The role and database of every service whose hosts `served` holds, on `server`: its
    /// role with the password from `.env`, its database owned by that role, reachable only from
    /// those hosts.
    pub fn database_objects(
        &self,
        server: &Host,
        served: impl Fn(&Host) -> bool,
    ) -> DatabaseObjects {
        let host = server;
        let mut roles: Vec<PostgresRole> = Vec::new();
        let mut databases: Vec<PostgresDatabase> = Vec::new();
        let mut rules = Vec::new();
        let mut remote_clients = false;
        for service in self.inventory.platform.services() {
            let Some(credentials) = self.database_credentials(service) else {
                continue;
            };
            let clients: Vec<&Host> = self
                .inventory
                .hosts_running(&service.name)
                .filter(|client| served(client))
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
            // A client on another host over TLS alone, and one on this host on loopback; in a
            // Patroni cluster, every client over TLS from its host's address, where its HAProxy
            // connects from.
            let cluster = self.inventory.database_cluster();
            let mut addresses = BTreeSet::new();
            for client in clients {
                if client.name == host.name && !cluster {
                    addresses.insert(("host", "127.0.0.1/32".to_owned()));
                } else {
                    remote_clients = true;
                    addresses.insert(("hostssl", hba_address(client.address())));
                }
            }
            rules.extend(addresses.into_iter().map(|(kind, address)| HbaRule {
                kind,
                database: credentials.name.clone(),
                user: credentials.user.clone(),
                address,
            }));
        }
        DatabaseObjects {
            state: PostgresState {
                roles,
                databases,
                cluster: None,
            },
            rules,
            remote_clients,
        }
    }

    /// Roles, databases, listen addresses and pg_hba of the PostgreSQL running on `host`: one
    /// database per service whose database lives here, reachable only from the hosts running
    /// that service.
    pub fn postgres(&self, host: &Host) -> Result<(PostgresState, Vec<DesiredFile>), RenderError> {
        let DatabaseObjects {
            state,
            rules,
            remote_clients,
        } = self.database_objects(host, |client| {
            client.database_host.as_deref() == Some(host.name.as_str())
        });
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
        // Its remote clients connect over TLS, with this host's certificate.
        let tls_paths = TlsPaths::of("postgres");
        if remote_clients {
            conf.insert("tls", &tls_paths);
        }
        let mut hba = Context::new();
        hba.insert("host", &host.name);
        hba.insert("rules", &rules);
        let folder = format!("/etc/postgresql/{PG_VERSION_PLACEHOLDER}/main");
        let mut files = if remote_clients {
            // PostgreSQL reads its certificate again on a reload.
            self.tls_files(
                host,
                &tls_paths,
                "postgres",
                true,
                &[Handler::Reload(Component::Postgres.unit().to_owned())],
            )?
        } else {
            Vec::new()
        };
        files.extend([
            // listen_addresses takes effect only at start.
            text_file(
                format!("{folder}/conf.d/60-provision.conf"),
                self.render("postgresql/provision.conf", host, &conf)?,
                0o644,
                "postgres",
                vec![Handler::Restart(Component::Postgres.unit().to_owned())],
            ),
            text_file(
                format!("{folder}/pg_hba.conf"),
                self.render("postgresql/pg_hba.conf", host, &hba)?,
                0o640,
                "postgres",
                vec![Handler::Reload(Component::Postgres.unit().to_owned())],
            ),
        ]);
        Ok((state, files))
    }
}
