//! The shell and SQL commands apply sends to a host, built from the desired state: no I/O here,
//! so each one is tested as text.

use crate::converge::plan::Action;
use crate::converge::transport::{replace_file_script, shell_quote};
use crate::desired::{PostgresState, RabbitMqState};

/// How long a restarted service gets to answer its health URL.
pub const HEALTH_WAIT_SECS: u32 = 30;

/// psql as the postgres superuser over the local socket, SQL on stdin, stopping at the first error.
pub const PSQL: &str = "cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres";

/// How long apply waits for a Patroni cluster's leader and the member itself to run: a fresh
/// member clones the primary first (`pg_basebackup`).
pub const PATRONI_WAIT_SECS: u32 = 180;

/// Succeeds once the member `host`'s PostgreSQL runs (`GET /health`) and the cluster it sees has
/// a running leader (`GET /cluster`, read by Patroni's own Python).
pub fn patroni_wait_command(host: &str) -> String {
    let api = crate::converge::facts::patroni_api;
    format!(
        "for i in $(seq 1 {PATRONI_WAIT_SECS}); do \
         if curl -fsS -o /dev/null --max-time 2 {} && \
         curl -fsS --max-time 2 {} | python3 -c 'import json, sys; members = json.load(sys.stdin).get(\"members\", []); sys.exit(0 if any(m.get(\"role\") in (\"leader\", \"master\", \"primary\") and m.get(\"state\") == \"running\" for m in members) else 1)'; \
         then exit 0; fi; sleep 1; done; exit 1",
        api(host, "/health"),
        api(host, "/cluster"),
    )
}

pub fn install_command(packages: &[String]) -> String {
    let names = packages
        .iter()
        .map(|name| shell_quote(name))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && \
         apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {names} >/dev/null"
    )
}

/// Upload on stdin to a temporary file beside the binary, keep the current one as `.previous`
/// (a hard link, so the running process is untouched), then rename: never a half-written binary.
pub fn push_binary_script(path: &str) -> String {
    let quoted = shell_quote(path);
    let previous = shell_quote(&format!("{path}.previous"));
    replace_file_script(
        path,
        0o755,
        "root",
        "root",
        &format!("if [ -f {quoted} ]; then ln -f {quoted} {previous}; fi; "),
    )
}

/// Puts `<path>.previous` back in place (keeping it as `.previous` too) and restarts the unit.
pub fn rollback_command(path: &str, unit: &str, socket: Socket) -> String {
    let quoted = shell_quote(path);
    let previous = shell_quote(&format!("{path}.previous"));
    let staging = shell_quote(&format!("{path}.rollback"));
    format!(
        "set -e; [ -f {previous} ]; cp -p {previous} {staging}; mv -f {staging} {quoted}; {}",
        restart_command(unit, socket)
    )
}

/// How a service's listening socket goes through its restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// The service binds its own port (no socket unit).
    None,
    /// systemd's socket stays open: connections wait in its queue while the service restarts.
    /// Where the socket is not active yet (a service that bound its port itself until this
    /// apply), the service is stopped first, so the socket can take the port.
    Kept,
    /// The socket unit was rewritten (another address): the socket is closed and opened again
    /// with the service, which refuses connections for that moment.
    Rebound,
}

/// Restarts a unit even after a crash loop: a unit that hit its start limit (more than 5 starts
/// in 10 s; with `RestartSec=2` only manual restarts get there) refuses `restart` until its failed
/// state is reset. A socket-activated service starts its socket first (`Requires=`).
pub fn restart_command(unit: &str, socket: Socket) -> String {
    let service = shell_quote(&format!("{unit}.service"));
    let socket_unit = shell_quote(&format!("{unit}.socket"));
    match socket {
        Socket::None => {
            format!("systemctl reset-failed {service} 2>/dev/null; systemctl restart {service}")
        }
        Socket::Kept => format!(
            "systemctl reset-failed {service} {socket_unit} 2>/dev/null; \
             systemctl is-active --quiet {socket_unit} || systemctl stop {service}; \
             systemctl restart {service}"
        ),
        Socket::Rebound => format!(
            "systemctl reset-failed {service} {socket_unit} 2>/dev/null; \
             systemctl stop {socket_unit} {service} && systemctl start {service}"
        ),
    }
}

/// Restarts etcd with the settings provision just wrote to `settings` (`/etc/default/etcd`).
/// The other members reach this one at the peer URL the cluster's membership holds for it, not at
/// the one its settings advertise, which counts only when the cluster is made: when the two differ
/// (a cluster made before its peers spoke TLS holds `http://`), the membership is first updated,
/// through the running member on loopback, and then the member restarts listening there; until
/// it does, the others fail to reach it, but it still reaches them. `scripts/pg-ha-e2e` with
/// `PG_HA_E2E_UPGRADE_FROM` upgrades the three members of its cluster this way, all at once.
/// Should the membership refuse the update (no quorum), etcd is not restarted and the apply fails
/// on this host.
pub fn etcd_restart_command(settings: &str) -> String {
    const ETCDCTL: &str =
        "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 --command-timeout=5s";
    format!(
        r#". {settings} || exit 1
if systemctl is-active --quiet etcd.service; then
  held=$({ETCDCTL} member list | awk -F', ' -v name="$ETCD_NAME" '$3 == name {{ print $1, $4 }}')
  set -- $held
  if [ $# -eq 2 ] && [ "$2" != "$ETCD_INITIAL_ADVERTISE_PEER_URLS" ]; then
    tries=1
    until {ETCDCTL} member update "$1" --peer-urls="$ETCD_INITIAL_ADVERTISE_PEER_URLS" >/dev/null; do
      if [ $tries -ge 5 ]; then
        echo "etcd: the membership still holds $2 for $ETCD_NAME, not $ETCD_INITIAL_ADVERTISE_PEER_URLS; etcd was not restarted: once the cluster has its quorum, run the same member update (etcdctl) and restart etcd" >&2
        exit 1
      fi
      tries=$((tries + 1))
      sleep 2
    done
    echo "etcd: $ETCD_NAME's peer URL in the membership: $2 -> $ETCD_INITIAL_ADVERTISE_PEER_URLS"
  fi
fi
systemctl reset-failed etcd.service 2>/dev/null
systemctl restart etcd.service"#
    )
}

/// Polls the health URL on the host itself, once a second, printing the body when it answers.
pub fn health_command(curl_args: &str) -> String {
    format!(
        "i=0; while [ $i -lt {HEALTH_WAIT_SECS} ]; do curl -fsS -m 2 {curl_args} && exit 0; i=$((i+1)); sleep 1; done; exit 1",
    )
}

/// A size for progress lines: bytes, KiB or MiB with one decimal, so a small binary is not "0 MB".
pub fn human_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    // Tenths, rounded, in integers: sizes of binaries need no floating point.
    let tenths = |unit: usize| (bytes * 10 + unit / 2) / unit;
    match bytes {
        0..KIB => format!("{bytes} B"),
        KIB..MIB => {
            let tenths = tenths(KIB);
            format!("{}.{} KiB", tenths / 10, tenths % 10)
        }
        _ => {
            let tenths = tenths(MIB);
            format!("{}.{} MiB", tenths / 10, tenths % 10)
        }
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The SQL for a PostgreSQL change, run by [`PSQL`] with the SQL on stdin; `None` for an action
/// that is no PostgreSQL change. `verifier` turns a password into its SCRAM verifier.
pub fn postgres_sql<E>(
    postgres: &PostgresState,
    action: &Action,
    verifier: impl Fn(&str) -> Result<String, E>,
) -> Result<Option<String>, E> {
    Ok(Some(match action {
        Action::CreateRole(index) | Action::SetRolePassword(index) => {
            let verb = if matches!(action, Action::CreateRole(_)) {
                "CREATE"
            } else {
                "ALTER"
            };
            let role = &postgres.roles[*index];
            // A verifier, not the password: the clear text never reaches the server or its logs.
            format!(
                "{verb} ROLE {} LOGIN PASSWORD {};\n",
                ident(&role.name),
                literal(&verifier(role.password.expose())?)
            )
        }
        Action::CreateDatabase(index) => {
            let database = &postgres.databases[*index];
            format!(
                "CREATE DATABASE {} OWNER {};\n",
                ident(&database.name),
                ident(&database.owner)
            )
        }
        Action::SetDatabaseOwner(index) => {
            let database = &postgres.databases[*index];
            format!(
                "ALTER DATABASE {} OWNER TO {};\n",
                ident(&database.name),
                ident(&database.owner)
            )
        }
        _ => return Ok(None),
    }))
}

/// The `rabbitmqctl` command for a RabbitMQ change and what goes on its stdin (the password,
/// never an argument); `None` for an action that is no RabbitMQ change.
pub fn rabbitmq_command<'a>(
    rabbitmq: &'a RabbitMqState,
    action: &Action,
) -> Option<(String, Option<&'a [u8]>)> {
    let user = shell_quote(&rabbitmq.user);
    let vhost = shell_quote(&rabbitmq.vhost);
    let password = Some(rabbitmq.password.expose().as_bytes());
    let (command, stdin) = match action {
        Action::AddVhost => (format!("rabbitmqctl -q add_vhost {vhost}"), None),
        // Without the password argument rabbitmqctl reads it from stdin.
        Action::AddRabbitUser => (format!("rabbitmqctl -q add_user {user}"), password),
        Action::SetRabbitPassword => (format!("rabbitmqctl -q change_password {user}"), password),
        Action::SetRabbitTags => {
            let tags = rabbitmq.tags.iter().map(|tag| shell_quote(tag)).collect::<Vec<_>>().join(" ");
            (format!("rabbitmqctl -q set_user_tags {user} {tags}"), None)
        }
        Action::SetRabbitPermissions => {
            let (configure, write, read) = &rabbitmq.permissions;
            (
                format!(
                    "rabbitmqctl -q set_permissions -p {vhost} {user} {} {} {}",
                    shell_quote(configure),
                    shell_quote(write),
                    shell_quote(read)
                ),
                None,
            )
        }
        Action::DeleteGuest => ("rabbitmqctl -q list_users | grep -q '^guest\\b' && rabbitmqctl -q delete_user guest || true".into(), None),
        // The node may have just restarted (a new cookie or configuration). Should the join
        // fail, the node starts again on its own rather than stay stopped. Quorum queues
        // declared before this node joined take a replica on it.
        Action::JoinCluster => {
            let cluster = rabbitmq.cluster.as_ref()?;
            let seed = shell_quote(&cluster.seed);
            let node = shell_quote(&cluster.node);
            (
                format!(
                    "rabbitmqctl -q await_startup && rabbitmqctl -q stop_app && rabbitmqctl -q reset && \
                     {{ rabbitmqctl -q join_cluster {seed} || {{ rabbitmqctl -q start_app; exit 1; }}; }} && \
                     rabbitmqctl -q start_app && rabbitmqctl -q await_startup && \
                     rabbitmq-queues -q grow {node} all"
                ),
                None,
            )
        }
        _ => return None,
    };
    Some((command, stdin))
}
