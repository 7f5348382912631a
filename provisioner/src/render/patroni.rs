//! PostgreSQL that survives losing its machine (`templates/patroni/`, `templates/etcd/`,
//! `templates/haproxy/`): every service's database in one Patroni cluster of 2 or more members,
//! its leader lock in an etcd cluster of 3 or more, and HAProxy on each host whose services own a
//! database, sending their connections to whichever member is the primary.

use tera::Context;

use super::inventory::{is_ip_address, Host};
use super::platform::Component;
use super::postgresql::DatabaseObjects;
use super::services::POSTGRES_PORT;
use super::tls::TlsPaths;
use super::{hba_address, text_file, url_host, RenderError, Renderer};
use crate::desired::{
    sha256_hex, DesiredFile, FileContent, Handler, PatroniMember, PostgresState, Secret,
    PG_VERSION_PLACEHOLDER,
};

/// The cluster's name (Patroni's `scope`) and etcd's data folder.
pub const CLUSTER_SCOPE: &str = "platform";
pub const PATRONI_CONFIG: &str = "/etc/patroni/config.yml";
pub const PATRONI_REST_PORT: u16 = 8008;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// Where Debian's etcd.service reads its settings.
pub const ETCD_SETTINGS: &str = "/etc/default/etcd";
/// Where Debian's patroni.service reads its environment: the settings Patroni reads at its start
/// alone.
pub const PATRONI_ENVIRONMENT: &str = "/etc/patroni_env.conf";
pub const HAPROXY_UNIT: &str = "haproxy";
pub const HAPROXY_CONFIG: &str = "/etc/haproxy/haproxy.cfg";
/// The services' local door to the primary, on each host whose services own a database.
pub const HAPROXY_PORT: u16 = 5000;

/// The `.env` secrets of the cluster: PostgreSQL's superuser (Patroni's own connections,
/// pg_rewind), the replication role, and the REST API's writing requests (switchover).
pub const PATRONI_SECRETS: [&str; 3] = [
    "PATRONI_SUPERUSER_PASSWORD",
    "PATRONI_REPLICATION_PASSWORD",
    "PATRONI_RESTAPI_PASSWORD",
];

#[derive(serde::Serialize)]
struct Server {
    name: String,
    address: String,
}

impl Renderer<'_> {
    /// The address a cluster daemon listens on: the host's own, else every interface.
    fn listen_on(host: &Host) -> String {
        if is_ip_address(host.address()) {
            host.address().to_owned()
        } else {
            "0.0.0.0".to_owned()
        }
    }

    /// etcd's settings on a member of the etcd cluster, and the TLS files it speaks to its peers
    /// and its clients with (the etcd user's).
    pub fn etcd(&self, host: &Host) -> Result<Vec<DesiredFile>, RenderError> {
        let members = self.inventory.etcd_hosts();
        let initial_cluster = members
            .iter()
            .map(|member| {
                format!(
                    "{}=https://{}:{ETCD_PEER_PORT}",
                    member.name,
                    url_host(member.address())
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        // Another membership is another cluster: its members never take this one's for theirs.
        let token = format!(
            "{CLUSTER_SCOPE}-{}",
            &sha256_hex(initial_cluster.as_bytes())[..12]
        );
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("scope", CLUSTER_SCOPE);
        context.insert(
            "members",
            &members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        );
        context.insert("listen", &url_host(&Self::listen_on(host)));
        context.insert("address", &url_host(host.address()));
        context.insert("peer_port", &ETCD_PEER_PORT);
        context.insert("client_port", &ETCD_CLIENT_PORT);
        context.insert("initial_cluster", &initial_cluster);
        context.insert("token", &token);
        let tls_paths = TlsPaths::of("etcd");
        context.insert("tls", &tls_paths);
        let restart = [Handler::Restart(Component::Etcd.unit().to_owned())];
        let mut files = self.tls_files(host, &tls_paths, "etcd", true, &restart)?;
        files.push(text_file(
            ETCD_SETTINGS,
            self.render("etcd/etcd.env", host, &context)?,
            0o644,
            "root",
            restart.to_vec(),
        ));
        Ok(files)
    }

    /// A Patroni member: the cluster's roles and databases (converged on the primary), Patroni's
    /// configuration, and Debian's own cluster kept from starting.
    pub fn patroni(&self, host: &Host) -> Result<(PostgresState, Vec<DesiredFile>), RenderError> {
        let inventory = self.inventory;
        let members = inventory.patroni_hosts();
        let DatabaseObjects {
            mut state, rules, ..
        } = self.database_objects(host, |_| true);
        state.cluster = Some(PatroniMember {
            first: members.first().is_some_and(|first| first.name == host.name),
        });
        let [superuser, replication, restapi] = self.patroni_secrets()?;
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("scope", CLUSTER_SCOPE);
        context.insert("listen", &Self::listen_on(host));
        context.insert("address", &url_host(host.address()));
        context.insert("rest_port", &PATRONI_REST_PORT);
        context.insert("postgres_port", &POSTGRES_PORT);
        context.insert("pg_version", PG_VERSION_PLACEHOLDER);
        context.insert(
            "etcd",
            &inventory
                .etcd_hosts()
                .iter()
                .map(|member| format!("{}:{ETCD_CLIENT_PORT}", url_host(member.address())))
                .collect::<Vec<_>>(),
        );
        context.insert(
            "members",
            &members
                .iter()
                .map(|member| hba_address(member.address()))
                .collect::<Vec<_>>(),
        );
        context.insert("rules", &rules);
        context.insert("superuser_password", superuser.expose());
        context.insert("replication_password", replication.expose());
        context.insert("restapi_password", restapi.expose());
        // The members replicate and serve their REST API over TLS, with the host's certificate,
        // as the postgres user.
        let tls_paths = TlsPaths::of("postgres");
        context.insert("tls", &tls_paths);
        context.insert("environment_file", PATRONI_ENVIRONMENT);
        let config = self.render("patroni/config.yml", host, &context)?;
        let environment = self.render("patroni/environment.conf", host, &context)?;
        let folder = format!("/etc/postgresql/{PG_VERSION_PLACEHOLDER}/main");
        let mut files = self.tls_files(
            host,
            &tls_paths,
            "postgres",
            true,
            &[Handler::Reload(Component::Patroni.unit().to_owned())],
        )?;
        files.extend([
            // Read at Patroni's start alone: a change restarts it.
            text_file(
                PATRONI_ENVIRONMENT,
                environment,
                0o644,
                "root",
                vec![Handler::Restart(Component::Patroni.unit().to_owned())],
            ),
            // Before Patroni's first start: its PostgreSQL takes the same port.
            text_file(
                format!("{folder}/start.conf"),
                self.render("patroni/start.conf", host, &context)?,
                0o644,
                "postgres",
                vec![Handler::Stop(Component::Postgres.unit().to_owned())],
            ),
            DesiredFile {
                path: PATRONI_CONFIG.to_owned(),
                content: FileContent::SecretText(Secret::new(config)),
                mode: 0o600,
                owner: "postgres".to_owned(),
                group: "postgres".to_owned(),
                // SIGHUP: Patroni applies what it can, and never restarts PostgreSQL for it.
                on_change: vec![Handler::Reload(Component::Patroni.unit().to_owned())],
            },
        ]);
        Ok((state, files))
    }

    /// HAProxy's configuration on a host whose services own a database, when the databases live
    /// in the Patroni cluster, and the CA its checks of the members' REST API verify them with.
    pub fn haproxy(&self, host: &Host) -> Result<Option<Vec<DesiredFile>>, RenderError> {
        let inventory = self.inventory;
        let owns_database = inventory
            .services_of(host)
            .any(|service| service.database.is_some());
        if !inventory.database_cluster() || !owns_database {
            return Ok(None);
        }
        let members: Vec<Server> = inventory
            .patroni_hosts()
            .iter()
            .map(|member| Server {
                name: member.name.clone(),
                address: url_host(member.address()),
            })
            .collect();
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("port", &HAPROXY_PORT);
        context.insert("postgres_port", &POSTGRES_PORT);
        context.insert("rest_port", &PATRONI_REST_PORT);
        context.insert("members", &members);
        let tls_paths = TlsPaths::of("haproxy");
        context.insert("ca_file", &tls_paths.ca_file);
        let reload = [Handler::Reload(HAPROXY_UNIT.to_owned())];
        let mut files = self.tls_files(host, &tls_paths, "haproxy", false, &reload)?;
        files.push(text_file(
            HAPROXY_CONFIG,
            self.render("haproxy/haproxy.cfg", host, &context)?,
            0o644,
            "root",
            reload.to_vec(),
        ));
        Ok(Some(files))
    }

    /// The cluster's three passwords from `.env`: 16 to 512 characters, no control character.
    fn patroni_secrets(&self) -> Result<[&Secret; 3], RenderError> {
        let mut found = Vec::new();
        for variable in PATRONI_SECRETS {
            let problem = |problem| RenderError::PatroniSecret {
                path: self.env.path().to_owned(),
                variable,
                problem,
            };
            let secret = self
                .env
                .secret(variable)
                .ok_or_else(|| problem("is missing"))?;
            let value = secret.expose();
            if value.len() < 16 || value.len() > 512 {
                return Err(problem("must be 16 to 512 characters long"));
            }
            if value.chars().any(char::is_control) {
                return Err(problem("may not hold control characters"));
            }
            found.push(secret);
        }
        Ok([found[0], found[1], found[2]])
    }
}
