//! `provision status` on one host, in one round trip like the facts: a shell script (sent on
//! stdin, run as root) prints each service's state and health and the billing queue, parsed here.

use std::fmt::Write as _;

use serde::Serialize;

use crate::converge::transport::{shell_quote, Transport, TransportError};
use crate::desired::DesiredHost;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub active: bool,
    pub healthy: bool,
    /// Its readiness path answers 2xx: the service can reach what it depends on.
    pub ready: bool,
    /// The `version` of the service's health answer.
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    pub name: String,
    pub messages: u64,
    pub consumers: u64,
}

/// A member of the Patroni cluster as the cluster sees it (`GET /cluster` of its REST API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub name: String,
    /// `leader`, `sync_standby`, `replica`.
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`…
    pub state: String,
    pub timeline: Option<u64>,
    /// Bytes of WAL this replica is behind the primary (`None` on the leader, or unknown).
    pub lag: Option<u64>,
}

/// The Patroni cluster as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub members: Vec<MemberStatus>,
    /// Why the member could not say (its Patroni does not answer), else `None`.
    pub error: Option<String>,
}

impl From<Result<Vec<MemberStatus>, String>> for ClusterStatus {
    fn from(result: Result<Vec<MemberStatus>, String>) -> Self {
        match result {
            Ok(members) => Self {
                members,
                error: None,
            },
            Err(error) => Self {
                members: Vec::new(),
                error: Some(error),
            },
        }
    }
}

/// One host's entry in the contract's status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub services: Vec<ServiceStatus>,
    /// On the broker's host only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// On a Patroni member: the cluster as it sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    pub error: Option<String>,
}

impl HostStatus {
    /// A host whose status could not be gathered.
    pub fn failed(host: &str, error: impl std::fmt::Display) -> Self {
        Self {
            host: host.to_string(),
            services: Vec::new(),
            queue: None,
            cluster: None,
            error: Some(error.to_string()),
        }
    }
}

/// Why a host's status could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: rabbitmqctl list_queues fails: {message}")]
    RabbitMq { host: String, message: String },
}

/// Runs the status script on the host (one round trip) and parses what it prints.
pub fn gather(
    transport: &dyn Transport,
    desired: &DesiredHost,
    queue: &str,
) -> Result<HostStatus, StatusError> {
    let script = status_script(desired);
    let output = transport.run("sh -s", Some(script.as_bytes()), true)?;
    parse_status(desired, queue, &output.stdout_text())
}

/// The status script: plain POSIX sh, each command's stdin closed (the script itself arrives on
/// stdin); a health answer is printed on the line of its verdict.
pub fn status_script(desired: &DesiredHost) -> String {
    let mut script = String::from("{\ncd /\n");
    for (index, service) in desired.services.iter().enumerate() {
        let _ = writeln!(
            script,
            "echo '@@service {index}'\n\
             if systemctl is-active --quiet {unit}; then echo active; else echo inactive; fi\n\
             if body=$(curl -fsS -m 3 {url} 2>/dev/null); then echo \"healthy $(printf '%s' \"$body\" | tr -d '\\n')\"; else echo unhealthy; fi\n\
             if curl -fsS -m 3 -o /dev/null {ready_url} 2>/dev/null; then echo ready; else echo unready; fi",
            unit = shell_quote(&service.unit),
            url = service.curl_args(&service.health_url),
            ready_url = service.curl_args(&service.ready_url),
        );
    }
    if let Some(rabbitmq) = &desired.rabbitmq {
        let _ = writeln!(
            script,
            "echo @@queues\n\
             if out=$(rabbitmqctl -s list_queues -p {vhost} name messages consumers 2>&1); then printf '%s\\n' \"$out\"; else echo \"@@queueerror $(printf '%s' \"$out\" | grep -m 1 .)\"; fi",
            vhost = shell_quote(&rabbitmq.vhost),
        );
    }
    if desired.patroni_member() {
        let _ = writeln!(
            script,
            "echo @@cluster\n\
             curl -sS -m 3 {} 2>&1 | tr -d '\n'; echo",
            crate::converge::facts::patroni_api(&desired.name, "/cluster")
        );
    }
    script.push_str("echo @@end\n} </dev/null\n");
    script
}

/// Parses the script's output; `queue` is the billing queue's name (`[settings] queue`).
pub fn parse_status(
    desired: &DesiredHost,
    queue: &str,
    output: &str,
) -> Result<HostStatus, StatusError> {
    let mut services: Vec<ServiceStatus> = desired
        .services
        .iter()
        .map(|service| ServiceStatus {
            name: service.unit.clone(),
            active: false,
            healthy: false,
            ready: false,
            version: None,
        })
        .collect();
    // Not declared yet: nobody published or consumed, so nothing waits.
    let mut queue_status = desired.rabbitmq.as_ref().map(|_| QueueStatus {
        name: queue.to_string(),
        messages: 0,
        consumers: 0,
    });
    let member = desired.patroni_member();
    let mut cluster = member.then(|| ClusterStatus::from(Err("Patroni did not answer".to_owned())));
    let mut section = "";
    let mut current: Option<usize> = None;
    for line in output.lines() {
        if let Some(message) = line.strip_prefix("@@queueerror") {
            return Err(StatusError::RabbitMq {
                host: desired.name.clone(),
                message: match message.trim() {
                    "" => "no output".to_string(),
                    message => message.to_string(),
                },
            });
        }
        if let Some(name) = line.strip_prefix("@@") {
            let mut words = name.split_whitespace();
            section = words.next().unwrap_or_default();
            current = words.next().and_then(|index| index.parse().ok());
            continue;
        }
        match (section, current.and_then(|index| services.get_mut(index))) {
            ("service", Some(service)) => {
                if line == "active" {
                    service.active = true;
                } else if line == "ready" {
                    service.ready = true;
                } else if let Some(body) = line.strip_prefix("healthy") {
                    service.healthy = true;
                    service.version = health_version(body);
                }
            }
            ("cluster", _) if member => cluster = Some(parse_cluster(line).into()),
            ("queues", _) => {
                let fields: Vec<&str> = line.split('\t').collect();
                if let (Some(status), [name, messages, consumers]) =
                    (queue_status.as_mut(), &fields[..])
                {
                    if *name == queue {
                        status.messages = messages.trim().parse().unwrap_or(0);
                        status.consumers = consumers.trim().parse().unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(HostStatus {
        host: desired.name.clone(),
        services,
        queue: queue_status,
        cluster,
        error: None,
    })
}

/// The members in a `GET /cluster` answer of Patroni's REST API, or what came instead of it.
pub fn parse_cluster(body: &str) -> Result<Vec<MemberStatus>, String> {
    let value: serde_json::Value = serde_json::from_str(body.trim()).map_err(|_| {
        let body = body.trim();
        if body.is_empty() {
            "Patroni did not answer".to_owned()
        } else {
            format!(
                "Patroni did not answer: {}",
                body.chars().take(200).collect::<String>()
            )
        }
    })?;
    let members = value
        .get("members")
        .and_then(|members| members.as_array())
        .ok_or("Patroni's answer lists no members")?;
    Ok(members
        .iter()
        .map(|member| {
            let text = |key: &str| {
                member
                    .get(key)
                    .and_then(|value| value.as_str())
                    .unwrap_or("-")
                    .to_owned()
            };
            MemberStatus {
                name: text("name"),
                role: text("role"),
                state: text("state"),
                timeline: member.get("timeline").and_then(|value| value.as_u64()),
                lag: member.get("lag").and_then(|value| value.as_u64()),
            }
        })
        .collect())
}

/// The `version` of a `/health` answer, `None` when it is no such JSON.
fn health_version(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()?
        .get("version")?
        .as_str()
        .map(str::to_string)
}
