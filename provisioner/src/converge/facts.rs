//! What a host holds now, gathered in one round trip: a shell script (sent on stdin, run as root)
//! prints one section per kind of fact, pyinfra-style, and is parsed here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::converge::scram;
use crate::converge::transport::{shell_quote, Transport, TransportError};
use crate::desired::{Arch, DesiredFile, DesiredHost, FileContent, PG_VERSION_PLACEHOLDER};

/// A regular file present on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFact {
    /// Permission bits, e.g. `0o600`.
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// The content, fetched only for non-secret text files, so plan can show a diff.
    pub content: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitFact {
    pub active: bool,
    pub enabled: bool,
}

/// PostgreSQL as seen by `psql` run as the postgres user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresFacts {
    /// Role name → whether its stored verifier accepts the desired password (false for roles
    /// the inventory does not mention).
    pub roles: BTreeMap<String, bool>,
    /// Database name → owner.
    pub databases: BTreeMap<String, String>,
}

/// RabbitMQ as seen by `rabbitmqctl`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RabbitMqFacts {
    pub vhosts: BTreeSet<String>,
    /// User → tags.
    pub users: BTreeMap<String, Vec<String>>,
    /// User → (configure, write, read) on the desired vhost.
    pub permissions: BTreeMap<String, (String, String, String)>,
    /// Whether `rabbitmqctl authenticate_user` accepted the desired password.
    pub password_matches: bool,
    /// The nodes of this node's cluster (`disk_nodes`; itself alone when it is in none), asked
    /// only of the nodes of a desired cluster.
    pub cluster_nodes: BTreeSet<String>,
    /// Those of them running now.
    pub running_nodes: BTreeSet<String>,
}

/// What a Patroni member's REST API says of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatroniFact {
    /// Not a member, or Patroni does not answer (not installed, not started, its host just booted).
    #[default]
    Silent,
    /// It answers, and is the cluster's primary.
    Primary,
    /// It answers, and is not the primary (a replica, or a member still starting).
    Replica,
}

/// Everything plan compares with a [`DesiredHost`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Packages dpkg reports as installed.
    pub packages: BTreeSet<String>,
    /// Accounts among the desired system users that exist.
    pub users: BTreeSet<String>,
    /// `uname -m`: binaries for another architecture are refused.
    pub arch: Option<String>,
    /// The directory name under /etc/postgresql (e.g. `15`), when PostgreSQL is installed.
    pub pg_version: Option<String>,
    /// Desired file path (as written in the desired state, placeholder included) → what is there.
    pub files: BTreeMap<String, FileFact>,
    /// Remote binary path → hex SHA-256 of what is there.
    pub binaries: BTreeMap<String, String>,
    /// Unit name (without `.service`) → state.
    pub units: BTreeMap<String, UnitFact>,
    /// `None` when PostgreSQL is not installed or does not answer, and on a Patroni member that
    /// is not the primary (it is not asked).
    pub postgres: Option<PostgresFacts>,
    /// On a Patroni member: whether it is the primary.
    pub patroni: PatroniFact,
    /// `None` when RabbitMQ is not installed or does not answer.
    pub rabbitmq: Option<RabbitMqFacts>,
    /// When the main process of each running unit a change may restart started, by unit.
    pub started: BTreeMap<String, Timestamp>,
    /// When each desired file and binary that restarts a service was last written, by path (as
    /// written in the desired state): one newer than its service's process is a lost restart.
    pub modified: BTreeMap<String, Timestamp>,
}

/// A moment on the host's clock, in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Parses what `date +%s.%N` and `stat -c %.9Y` print (`1796204508.123456000`).
    pub fn parse(text: &str) -> Option<Self> {
        let (seconds, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), "0"));
        let seconds: u64 = seconds.parse().ok()?;
        if fraction.is_empty()
            || fraction.len() > 9
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let nanos: u64 = format!("{fraction:0<9}").parse().ok()?;
        seconds
            .checked_mul(1_000_000_000)?
            .checked_add(nanos)
            .map(Self)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{:09}",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

/// Why facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: the host is {remote} but the binaries are built for {local}")]
    Arch {
        host: String,
        remote: String,
        local: String,
    },
    #[error("{host}: PostgreSQL is installed but psql as postgres fails: {message}")]
    Postgres { host: String, message: String },
    #[error("{host}: RabbitMQ is installed but rabbitmqctl fails: {message}")]
    RabbitMq { host: String, message: String },
}

/// Runs the facts script on the host (one round trip) and parses what it prints.
pub fn gather(transport: &dyn Transport, desired: &DesiredHost) -> Result<HostFacts, FactsError> {
    let script = facts_script(desired);
    let output = transport.run("sh -s", Some(script.as_bytes()), true)?;
    let output = output.stdout_text();
    // Without this, roles that exist would look missing and apply would try to create them.
    if let Some(message) = script_error(&output, "@@pgerror") {
        return Err(FactsError::Postgres {
            host: desired.name.clone(),
            message: message.to_string(),
        });
    }
    // Likewise: a broker that does not answer is not a broker without vhost and user.
    if let Some(message) = script_error(&output, "@@rmqerror") {
        return Err(FactsError::RabbitMq {
            host: desired.name.clone(),
            message: message.to_string(),
        });
    }
    let facts = parse_facts(desired, &output);
    let pushed = desired.binaries.first().map(|binary| binary.arch);
    if let (Some(remote), Some(pushed)) = (facts.arch.as_deref(), pushed) {
        if Arch::from_name(remote) != Some(pushed) {
            return Err(FactsError::Arch {
                host: desired.name.clone(),
                remote: remote.to_string(),
                local: pushed.to_string(),
            });
        }
    }
    Ok(facts)
}

/// The first line of psql's or rabbitmqctl's error (after `marker`), when PostgreSQL or RabbitMQ
/// is installed but did not answer the facts script.
fn script_error<'a>(output: &'a str, marker: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(marker))
        .map(|message| match message.trim() {
            "" => "no output",
            message => message,
        })
}

/// One kind of fact, pyinfra-style: the shell that prints it, beside the parser that reads that
/// output and the inverse that prints it for given facts (so fakes and tests can never drift from
/// the format). Every fact's command goes into one script: still one round trip per host.
pub struct Fact {
    /// The `@@` sections its command prints, each followed by its lines.
    pub sections: &'static [&'static str],
    /// The script lines, or `None` when this host needs no such fact.
    pub command: fn(&DesiredHost) -> Option<String>,
    /// Reads one line of one of its sections.
    pub parse: fn(&DesiredHost, &str, &str, &mut Parsing),
    /// What the command prints on a host holding `facts` (for fakes of a host).
    pub print: fn(&DesiredHost, &HostFacts) -> String,
}

impl std::fmt::Debug for Fact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fact")
            .field("sections", &self.sections)
            .finish()
    }
}

/// The facts being read; PostgreSQL's and RabbitMQ's are kept apart until the end, when a failed
/// `psql` or `rabbitmqctl` (an `@@pgerror` / `@@rmqerror` line) discards them.
#[derive(Debug, Default)]
pub struct Parsing {
    facts: HostFacts,
    pg_roles: Option<BTreeMap<String, bool>>,
    pg_databases: Option<BTreeMap<String, String>>,
    pg_failed: bool,
    rabbitmq: Option<RabbitMqFacts>,
    rabbitmq_failed: bool,
}

/// Every fact, in the script's order.
pub const FACTS: [Fact; 11] = [
    ARCH, PG_VERSION, PACKAGES, USERS, FILES, BINARIES, UNITS, STARTED, PATRONI, POSTGRES, RABBITMQ,
];

/// curl's arguments to ask Patroni's REST API on the member `host` itself for `path`: HTTPS on
/// loopback, the certificate verified against the platform CA for the host's name (which it
/// names, where it does not name 127.0.0.1).
pub fn patroni_api(host: &str, path: &str) -> String {
    use crate::converge::transport::shell_quote;
    use crate::render::patroni::PATRONI_REST_PORT;
    let ca = crate::render::tls::TlsPaths::of("postgres").ca_file;
    format!(
        "--cacert {} --resolve {} {}",
        shell_quote(&ca),
        shell_quote(&format!("{host}:{PATRONI_REST_PORT}:127.0.0.1")),
        shell_quote(&format!("https://{host}:{PATRONI_REST_PORT}{path}")),
    )
}

/// Whether a Patroni member is the primary: `GET /primary` is 200 there alone. Also sets
/// `$PRIMARY` (`yes` or `no`), which [`POSTGRES`] reads.
const PATRONI: Fact = Fact {
    sections: &["patroni"],
    command: |desired| {
        let member = desired.patroni_member();
        member.then(|| {
            format!(
                "PRIMARY=no\necho @@patroni\nif command -v curl >/dev/null 2>&1; then c=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 {}); echo \"$c\"; [ \"$c\" = 200 ] && PRIMARY=yes; fi\n",
                patroni_api(&desired.name, "/primary")
            )
        })
    },
    parse: |_, _, line, parsing| {
        parsing.facts.patroni = match line.trim() {
            "200" => PatroniFact::Primary,
            // 000: nothing answered; any other status is Patroni answering "not the primary".
            "" | "000" => PatroniFact::Silent,
            _ => PatroniFact::Replica,
        };
    },
    print: |desired, facts| {
        let member = desired.patroni_member();
        if !member {
            return String::new();
        }
        let code = match facts.patroni {
            PatroniFact::Primary => "200",
            PatroniFact::Replica => "503",
            PatroniFact::Silent => "000",
        };
        format!("@@patroni\n{code}\n")
    },
};

const ARCH: Fact = Fact {
    sections: &["arch"],
    command: |_| Some("echo @@arch\nuname -m\n".into()),
    parse: |_, _, line, parsing| {
        if !line.trim().is_empty() {
            parsing.facts.arch = Some(line.trim().to_string());
        }
    },
    print: |_, facts| format!("@@arch\n{}\n", facts.arch.clone().unwrap_or_default()),
};

/// Also sets `$PGV`, which the paths of PostgreSQL's files use in later facts.
const PG_VERSION: Fact = Fact {
    sections: &["pgversion"],
    command: |_| {
        Some(
            "PGV=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)\necho @@pgversion\necho \"$PGV\"\n"
                .into(),
        )
    },
    parse: |_, _, line, parsing| {
        if !line.trim().is_empty() {
            parsing.facts.pg_version = Some(line.trim().to_string());
        }
    },
    print: |_, facts| {
        format!(
            "@@pgversion\n{}\n",
            facts.pg_version.clone().unwrap_or_default()
        )
    },
};

const PACKAGES: Fact = Fact {
    sections: &["packages"],
    command: |desired| {
        let mut script = String::from("echo @@packages\n");
        if !desired.packages.is_empty() {
            let _ = writeln!(
                script,
                "dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' {} 2>/dev/null",
                quote_all(&desired.packages)
            );
        }
        Some(script)
    },
    parse: |_, _, line, parsing| {
        let mut fields = line.split_whitespace();
        if let (Some(name), Some(status)) = (fields.next(), fields.next()) {
            if status.starts_with("ii") {
                // dpkg-query may print `name:arch` for multi-arch packages.
                let name = name.split(':').next().unwrap_or(name);
                parsing.facts.packages.insert(name.to_string());
            }
        }
    },
    print: |_, facts| {
        let mut out = String::from("@@packages\n");
        for package in &facts.packages {
            let _ = writeln!(out, "{package} ii ");
        }
        out
    },
};

const USERS: Fact = Fact {
    sections: &["users"],
    command: |desired| {
        let mut script = String::from("echo @@users\n");
        if !desired.system_users.is_empty() {
            let _ = writeln!(
                script,
                "for u in {}; do id -u \"$u\" >/dev/null 2>&1 && echo \"$u\"; done",
                quote_all(&desired.system_users)
            );
        }
        Some(script)
    },
    parse: |_, _, line, parsing| {
        if !line.trim().is_empty() {
            parsing.facts.users.insert(line.trim().to_string());
        }
    },
    print: |_, facts| {
        let mut out = String::from("@@users\n");
        for user in &facts.users {
            let _ = writeln!(out, "{user}");
        }
        out
    },
};

/// Mode, owner, group and SHA-256 of each desired file (`F index …`), and the content of the
/// non-secret ones (`C index base64`), so plan can show a diff.
const FILES: Fact = Fact {
    sections: &["files"],
    command: |desired| {
        let mut script = String::from("echo @@files\n");
        for (index, file) in desired.files.iter().enumerate() {
            let path = shell_path(&file.path);
            let _ = writeln!(
                script,
                "f={path}; if [ -f \"$f\" ]; then echo \"F {index} $(stat -c '%a %U %G' \"$f\") $(sha256sum \"$f\" | cut -d' ' -f1)\"; fi"
            );
            if matches!(file.content, FileContent::Text(_)) {
                let _ = writeln!(
                    script,
                    "if [ -f \"$f\" ]; then echo \"C {index} $(base64 -w0 \"$f\")\"; fi"
                );
            }
        }
        Some(script)
    },
    parse: |desired, _, line, parsing| {
        let fields: Vec<&str> = line.split(' ').collect();
        let file = |index: &str| {
            index
                .parse::<usize>()
                .ok()
                .and_then(|index| desired.files.get(index))
        };
        let facts = &mut parsing.facts;
        match fields[..] {
            ["F", index, mode, owner, group, sha] => {
                if let Some(file) = file(index) {
                    facts.files.insert(
                        file.path.clone(),
                        FileFact {
                            mode: u32::from_str_radix(mode, 8).unwrap_or(0),
                            owner: owner.to_string(),
                            group: group.to_string(),
                            sha256: sha.to_string(),
                            content: None,
                        },
                    );
                }
            }
            ["C", index, content] => {
                if let Some(fact) = file(index).and_then(|file| facts.files.get_mut(&file.path)) {
                    fact.content = STANDARD.decode(content.trim()).ok();
                }
            }
            _ => {}
        }
    },
    print: |desired, facts| {
        let mut out = String::from("@@files\n");
        for (index, file) in desired.files.iter().enumerate() {
            if let Some(fact) = facts.files.get(&file.path) {
                let _ = writeln!(
                    out,
                    "F {index} {:o} {} {} {}",
                    fact.mode, fact.owner, fact.group, fact.sha256
                );
                if let Some(content) = &fact.content {
                    let _ = writeln!(out, "C {index} {}", STANDARD.encode(content));
                }
            }
        }
        out
    },
};

const BINARIES: Fact = Fact {
    sections: &["binaries"],
    command: |desired| {
        let mut script = String::from("echo @@binaries\n");
        for (index, binary) in desired.binaries.iter().enumerate() {
            let path = shell_quote(&binary.remote_path);
            let _ = writeln!(
                script,
                "if [ -f {path} ]; then echo \"B {index} $(sha256sum {path} | cut -d' ' -f1)\"; fi"
            );
        }
        Some(script)
    },
    parse: |desired, _, line, parsing| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let ["B", index, sha] = fields[..] {
            if let Some(binary) = index
                .parse::<usize>()
                .ok()
                .and_then(|index| desired.binaries.get(index))
            {
                parsing
                    .facts
                    .binaries
                    .insert(binary.remote_path.clone(), sha.to_string());
            }
        }
    },
    print: |desired, facts| {
        let mut out = String::from("@@binaries\n");
        for (index, binary) in desired.binaries.iter().enumerate() {
            if let Some(sha) = facts.binaries.get(&binary.remote_path) {
                let _ = writeln!(out, "B {index} {sha}");
            }
        }
        out
    },
};

/// Whether each platform service and host unit is active and enabled.
const UNITS: Fact = Fact {
    sections: &["units"],
    command: |desired| {
        let mut script = String::from("echo @@units\n");
        if !desired.services.is_empty() || !desired.host_units.is_empty() {
            let units = quote_all(
                desired
                    .services
                    .iter()
                    .map(|service| &service.unit)
                    .chain(&desired.host_units),
            );
            let _ = writeln!(
                script,
                "for u in {units}; do echo \"$u $(systemctl is-active \"$u.service\" 2>/dev/null) $(systemctl is-enabled \"$u.service\" 2>/dev/null)\"; done"
            );
        }
        Some(script)
    },
    parse: |_, _, line, parsing| {
        let mut fields = line.split_whitespace();
        if let Some(unit) = fields.next() {
            let active = fields.next() == Some("active");
            let enabled = fields.next() == Some("enabled");
            parsing
                .facts
                .units
                .insert(unit.to_string(), UnitFact { active, enabled });
        }
    },
    print: |_, facts| {
        let mut out = String::from("@@units\n");
        for (unit, state) in &facts.units {
            let active = if state.active { "active" } else { "inactive" };
            let enabled = if state.enabled { "enabled" } else { "disabled" };
            let _ = writeln!(out, "{unit} {active} {enabled}");
        }
        out
    },
};

/// The desired files whose change restarts a unit (a service's unit and env file, a daemon's
/// configuration), by index.
fn restarting_files(desired: &DesiredHost) -> impl Iterator<Item = (usize, &DesiredFile)> {
    let inputs: BTreeSet<&str> = desired
        .restarted_units()
        .into_iter()
        .flat_map(|unit| desired.restart_inputs(unit))
        .collect();
    desired
        .files
        .iter()
        .enumerate()
        .filter(move |(_, file)| inputs.contains(file.path.as_str()))
}

/// When the running process of each unit a change may restart started (`S index time`, systemd's
/// own record; the platform services, RabbitMQ, PostgreSQL, keepalived, the firewall), and when
/// the files and binaries that restart them were last written (`M file-index time`,
/// `B binary-index time`), all on the host's clock: an apply that wrote a file and died before
/// the restart leaves a file newer than the process, which plan then restarts.
const STARTED: Fact = Fact {
    sections: &["started"],
    command: |desired| {
        let mut script = String::from(
            "echo @@started
",
        );
        for (index, unit) in desired.restarted_units().into_iter().enumerate() {
            let unit = shell_quote(&format!("{unit}.service"));
            let _ = writeln!(
                script,
                "t=$(systemctl show -P ExecMainStartTimestamp --timestamp=us+utc {unit} 2>/dev/null) && [ -n \"$t\" ] && [ \"$t\" != n/a ] && s=$(date -d \"$t\" +%s.%N 2>/dev/null) && echo \"S {index} $s\""
            );
        }
        for (index, file) in restarting_files(desired) {
            let path = shell_path(&file.path);
            let _ = writeln!(
                script,
                "m=$(stat -c %.9Y {path} 2>/dev/null) && echo \"M {index} $m\""
            );
        }
        for (index, binary) in desired.binaries.iter().enumerate() {
            let path = shell_quote(&binary.remote_path);
            let _ = writeln!(
                script,
                "m=$(stat -c %.9Y {path} 2>/dev/null) && echo \"B {index} $m\""
            );
        }
        Some(script)
    },
    parse: |desired, _, line, parsing| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kind, index, time] = fields[..] else {
            return;
        };
        let (Ok(index), Some(time)) = (index.parse::<usize>(), Timestamp::parse(time)) else {
            return;
        };
        let facts = &mut parsing.facts;
        match kind {
            "S" => {
                if let Some(unit) = desired.restarted_units().get(index) {
                    facts.started.insert((*unit).to_owned(), time);
                }
            }
            "M" => {
                if let Some(file) = desired.files.get(index) {
                    facts.modified.insert(file.path.clone(), time);
                }
            }
            "B" => {
                if let Some(binary) = desired.binaries.get(index) {
                    facts.modified.insert(binary.remote_path.clone(), time);
                }
            }
            _ => {}
        }
    },
    print: |desired, facts| {
        let mut out = String::from("@@started\n");
        for (index, unit) in desired.restarted_units().into_iter().enumerate() {
            if let Some(time) = facts.started.get(unit) {
                let _ = writeln!(out, "S {index} {time}");
            }
        }
        for (index, file) in restarting_files(desired) {
            if let Some(time) = facts.modified.get(&file.path) {
                let _ = writeln!(out, "M {index} {time}");
            }
        }
        for (index, binary) in desired.binaries.iter().enumerate() {
            if let Some(time) = facts.modified.get(&binary.remote_path) {
                let _ = writeln!(out, "B {index} {time}");
            }
        }
        out
    },
};

/// Roles with their stored verifiers (checked here against the desired passwords, which never
/// leave this machine) and databases with their owners, from `psql` as postgres.
const POSTGRES: Fact = Fact {
    sections: &["pgroles", "pgdatabases"],
    command: |desired| {
        desired.postgres.as_ref().map(|postgres| {
            // A member that is not the primary is not asked: the roles are the primary's.
            let primary = if postgres.cluster.is_some() {
                "[ \"$PRIMARY\" = yes ] && "
            } else {
                ""
            };
            format!("if {primary}[ -n \"$PGV\" ] && command -v psql >/dev/null 2>&1 && id -u postgres >/dev/null 2>&1; then\n\
             if out=$(runuser -u postgres -- psql -XAtq -F \"$TAB\" -c \"select rolname, coalesce(rolpassword, '') from pg_authid\" 2>&1); then echo @@pgroles; printf '%s\\n' \"$out\"; else echo \"@@pgerror $(printf '%s' \"$out\" | head -n 1)\"; fi\n\
             if out=$(runuser -u postgres -- psql -XAtq -F \"$TAB\" -c \"select datname, pg_get_userbyid(datdba) from pg_database\" 2>&1); then echo @@pgdatabases; printf '%s\\n' \"$out\"; else echo \"@@pgerror $(printf '%s' \"$out\" | head -n 1)\"; fi\n\
             fi\n")
        })
    },
    parse: |desired, section, line, parsing| match section {
        "pgroles" => {
            if let (Some(roles), Some((name, verifier))) =
                (parsing.pg_roles.as_mut(), line.split_once('\t'))
            {
                let matches = desired
                    .postgres
                    .iter()
                    .flat_map(|postgres| &postgres.roles)
                    .find(|role| role.name == name)
                    .is_some_and(|role| scram::verify(verifier, role.password.expose()));
                roles.insert(name.to_string(), matches);
            }
        }
        _ => {
            if let (Some(databases), Some((name, owner))) =
                (parsing.pg_databases.as_mut(), line.split_once('\t'))
            {
                databases.insert(name.to_string(), owner.to_string());
            }
        }
    },
    print: |desired, facts| {
        let Some(postgres) = &facts.postgres else {
            return String::new();
        };
        let mut out = String::from("@@pgroles\n");
        for (role, matches) in &postgres.roles {
            // A verifier of the desired password where it matches, an empty one elsewhere.
            let password = desired
                .postgres
                .iter()
                .flat_map(|postgres| &postgres.roles)
                .find(|desired| &desired.name == role)
                .filter(|_| *matches)
                .map(|desired| desired.password.expose());
            let verifier = password
                .and_then(|password| scram::make_verifier(password).ok())
                .unwrap_or_default();
            let _ = writeln!(out, "{role}\t{verifier}");
        }
        out.push_str("@@pgdatabases\n");
        for (database, owner) in &postgres.databases {
            let _ = writeln!(out, "{database}\t{owner}");
        }
        out
    },
};

/// Vhosts, users with their tags, permissions on the desired vhost, and whether the desired
/// password matches, from one `rabbitmqctl export_definitions` (each rabbitmqctl boots an Erlang
/// VM: one, not one per question); the password is checked here against the user's salted hash,
/// as SCRAM verifiers are for PostgreSQL, so it never goes to the host. A cluster's node also
/// reports its cluster (`cluster_status`), side by side.
///
/// Either command failing is an error of the host's facts, never an empty answer: a cluster's
/// node whose `cluster_status` said nothing would look out of the cluster, and be reset to join
/// it again. Under load a CLI can fail to reach its own running node (two Erlang VMs booting at
/// once on each broker host: `ha-e2e`'s rolling deploy saw it on all three nodes of its lab, on a
/// slow day); each command that failed runs once more, alone, before the host is failed.
const RABBITMQ: Fact = Fact {
    sections: &["rmqdefinitions", "rmqcluster"],
    command: |desired| {
        desired.rabbitmq.as_ref().map(|rabbitmq| {
            let cluster = rabbitmq.cluster.is_some();
            let definitions = "rabbitmqctl -q export_definitions --format json - >\"$R/definitions\" 2>\"$R/err\"";
            let status = "rabbitmqctl -s cluster_status --formatter json >\"$R/cluster\" 2>\"$R/err-cluster\"";
            format!(
                "if command -v rabbitmqctl >/dev/null 2>&1; then\n\
                 R=$(mktemp -d)\n\
                 {definitions} & D=$!\n\
                 {cluster_status}\
                 wait $D || {definitions} || echo \"@@rmqerror $(grep -m 1 . \"$R/err\")\" >\"$R/definitions\"\n\
                 {cluster_retry}\
                 echo @@rmqdefinitions; cat \"$R/definitions\"; echo\n\
                 {cluster_out}\
                 rm -rf \"$R\"\n\
                 fi\n",
                cluster_status = if cluster {
                    format!("{status} & C=$!\n")
                } else {
                    String::new()
                },
                cluster_retry = if cluster {
                    format!("wait $C || {status} || echo \"@@rmqerror cluster_status: $(grep -m 1 . \"$R/err-cluster\")\" >\"$R/cluster\"\n")
                } else {
                    String::new()
                },
                cluster_out = if cluster {
                    "echo @@rmqcluster; cat \"$R/cluster\"; echo\n"
                } else {
                    ""
                },
            )
        })
    },
    parse: |desired, section, line, parsing| {
        let Some(rabbitmq) = parsing.rabbitmq.as_mut() else {
            return;
        };
        if line.trim().is_empty() {
            return;
        }
        match section {
            "rmqdefinitions" => {
                let Ok(definitions) = serde_json::from_str::<Definitions>(line) else {
                    parsing.rabbitmq_failed = true;
                    return;
                };
                let wanted = desired.rabbitmq.as_ref();
                for vhost in definitions.vhosts {
                    rabbitmq.vhosts.insert(vhost.name);
                }
                for user in definitions.users {
                    if let Some(wanted) = wanted.filter(|wanted| wanted.user == user.name) {
                        rabbitmq.password_matches = rabbit_password_matches(
                            &user.hashing_algorithm,
                            &user.password_hash,
                            wanted.password.expose(),
                        );
                    }
                    rabbitmq.users.insert(user.name, user.tags.into_list());
                }
                for permission in definitions.permissions {
                    if wanted.is_some_and(|wanted| wanted.vhost == permission.vhost) {
                        rabbitmq.permissions.insert(
                            permission.user,
                            (permission.configure, permission.write, permission.read),
                        );
                    }
                }
            }
            _ => {
                #[derive(serde::Deserialize)]
                struct ClusterStatus {
                    #[serde(default)]
                    disk_nodes: BTreeSet<String>,
                    #[serde(default)]
                    running_nodes: BTreeSet<String>,
                }
                if let Ok(status) = serde_json::from_str::<ClusterStatus>(line) {
                    rabbitmq.cluster_nodes = status.disk_nodes;
                    rabbitmq.running_nodes = status.running_nodes;
                }
            }
        }
    },
    print: |desired, facts| {
        let Some(rabbitmq) = &facts.rabbitmq else {
            return String::new();
        };
        let wanted = desired.rabbitmq.as_ref();
        let users: Vec<serde_json::Value> = rabbitmq
            .users
            .iter()
            .map(|(name, tags)| {
                // The desired password's hash where it matches, another one's elsewhere.
                let password = match wanted {
                    Some(wanted) if &wanted.user == name && rabbitmq.password_matches => {
                        wanted.password.expose().to_owned()
                    }
                    _ => format!("not the password of {name}"),
                };
                serde_json::json!({
                    "name": name,
                    "password_hash": rabbit_password_hash(*b"salt", &password),
                    "hashing_algorithm": SHA256_HASHING,
                    "tags": tags,
                })
            })
            .collect();
        let vhost = wanted.map(|wanted| wanted.vhost.as_str()).unwrap_or("/");
        let definitions = serde_json::json!({
            "vhosts": rabbitmq.vhosts.iter().map(|name| serde_json::json!({"name": name})).collect::<Vec<_>>(),
            "users": users,
            "permissions": rabbitmq.permissions.iter().map(|(user, (configure, write, read))| serde_json::json!({
                "user": user, "vhost": vhost, "configure": configure, "write": write, "read": read,
            })).collect::<Vec<_>>(),
        });
        let mut out = format!("@@rmqdefinitions\n{definitions}\n");
        if wanted.is_some_and(|wanted| wanted.cluster.is_some()) {
            let status = serde_json::json!({
                "disk_nodes": rabbitmq.cluster_nodes,
                "running_nodes": rabbitmq.running_nodes,
            });
            let _ = writeln!(out, "@@rmqcluster\n{status}");
        }
        out
    },
};

/// What `rabbitmqctl export_definitions` says of the platform's objects.
#[derive(serde::Deserialize)]
struct Definitions {
    #[serde(default)]
    vhosts: Vec<NamedVhost>,
    #[serde(default)]
    users: Vec<DefinedUser>,
    #[serde(default)]
    permissions: Vec<DefinedPermission>,
}

#[derive(serde::Deserialize)]
struct NamedVhost {
    name: String,
}

#[derive(serde::Deserialize)]
struct DefinedUser {
    name: String,
    #[serde(default)]
    password_hash: String,
    #[serde(default)]
    hashing_algorithm: String,
    #[serde(default)]
    tags: Tags,
}

/// A list since RabbitMQ 3.9; a comma-separated string before.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Tags {
    List(Vec<String>),
    Text(String),
}

impl Default for Tags {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl Tags {
    fn into_list(self) -> Vec<String> {
        match self {
            Self::List(tags) => tags,
            Self::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|tag| !tag.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(serde::Deserialize)]
struct DefinedPermission {
    user: String,
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

/// RabbitMQ's default password hashing.
const SHA256_HASHING: &str = "rabbit_password_hashing_sha256";

/// `base64(salt ‖ SHA-256(salt ‖ password))`, as RabbitMQ stores a password.
pub fn rabbit_password_hash(salt: [u8; 4], password: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    STANDARD.encode([&salt[..], &digest[..]].concat())
}

/// Whether `password` is the one RabbitMQ stored as `hash` with `algorithm` (SHA-256 or SHA-512,
/// salted; any other algorithm counts as a mismatch, so the password is set again).
pub fn rabbit_password_matches(algorithm: &str, hash: &str, password: &str) -> bool {
    use sha2::{Digest, Sha256, Sha512};
    let Ok(bytes) = STANDARD.decode(hash) else {
        return false;
    };
    let Some((salt, stored)) = bytes.split_at_checked(4) else {
        return false;
    };
    let computed = match algorithm {
        "rabbit_password_hashing_sha256" | "" => Sha256::new()
            .chain_update(salt)
            .chain_update(password.as_bytes())
            .finalize()
            .to_vec(),
        "rabbit_password_hashing_sha512" => Sha512::new()
            .chain_update(salt)
            .chain_update(password.as_bytes())
            .finalize()
            .to_vec(),
        _ => return false,
    };
    computed == stored
}

/// The facts script: plain POSIX sh, each command's stdin closed (the script itself arrives on
/// stdin), secrets only inside here-documents, so never on a command line.
pub fn facts_script(desired: &DesiredHost) -> String {
    let mut script = String::from("{\ncd /\nTAB=$(printf '\\t')\n");
    for fact in &FACTS {
        if let Some(command) = (fact.command)(desired) {
            script.push_str(&command);
        }
    }
    script.push_str("echo @@end\n} </dev/null\n");
    script
}

/// What the facts script prints on a host holding `facts`: each fact's printer, in the script's
/// order. Parsing it gives `facts` back; fakes of a host answer the script with it.
pub fn script_output(desired: &DesiredHost, facts: &HostFacts) -> String {
    let mut out: String = FACTS
        .iter()
        .map(|fact| (fact.print)(desired, facts))
        .collect();
    out.push_str("@@end\n");
    out
}

/// A desired path as a shell word, the PostgreSQL version placeholder becoming `$PGV`.
fn shell_path(path: &str) -> String {
    path.split(PG_VERSION_PLACEHOLDER)
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join("\"$PGV\"")
}

fn quote_all<'a>(values: impl IntoIterator<Item = &'a String>) -> String {
    values
        .into_iter()
        .map(|value| shell_quote(value))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses the script's output into facts, each section by the fact that printed it; password
/// checks happen here, locally.
pub fn parse_facts(desired: &DesiredHost, output: &str) -> HostFacts {
    let mut parsing = Parsing::default();
    let mut current: Option<(&Fact, &str)> = None;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            if name.starts_with("pgerror") {
                parsing.pg_failed = true;
                continue;
            }
            if name.starts_with("rmqerror") {
                parsing.rabbitmq_failed = true;
                continue;
            }
            current = FACTS
                .iter()
                .find(|fact| fact.sections.contains(&name))
                .map(|fact| (fact, name));
            match name {
                "pgroles" => parsing.pg_roles = Some(parsing.pg_roles.take().unwrap_or_default()),
                "pgdatabases" => {
                    parsing.pg_databases = Some(parsing.pg_databases.take().unwrap_or_default())
                }
                "rmqdefinitions" => {
                    parsing.rabbitmq = Some(parsing.rabbitmq.take().unwrap_or_default())
                }
                _ => {}
            }
            continue;
        }
        if let Some((fact, section)) = current {
            (fact.parse)(desired, section, line, &mut parsing);
        }
    }
    let mut facts = parsing.facts;
    if !parsing.pg_failed {
        if let (Some(roles), Some(databases)) = (parsing.pg_roles, parsing.pg_databases) {
            facts.postgres = Some(PostgresFacts { roles, databases });
        }
    }
    if !parsing.rabbitmq_failed {
        facts.rabbitmq = parsing.rabbitmq;
    }
    facts
}
