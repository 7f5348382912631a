//! What plan and apply report per host: the entries of the JSON document of the contract
//! (`docs/provision-json.md`) and the progress lines on stderr.

use serde::Serialize;

use crate::converge::plan::{Change, ChangeKind, HostPlan};

/// One change as the JSON document of the contract shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    pub kind: ChangeKind,
    pub target: String,
    pub detail: String,
}

impl From<&Change> for ChangeReport {
    fn from(change: &Change) -> Self {
        Self {
            kind: change.kind,
            target: change.target.clone(),
            detail: change.detail.clone(),
        }
    }
}

/// The outcome of plan or apply on one host (the contract's `hosts[]` entry).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostReport {
    pub host: String,
    pub ok: usize,
    pub changed: usize,
    pub failed: usize,
    pub changes: Vec<ChangeReport>,
    pub restarted: Vec<String>,
    pub rolled_back: Vec<String>,
    pub error: Option<String>,
}

impl HostReport {
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_string(),
            ..Self::default()
        }
    }

    pub fn failed_with(host: &str, error: impl std::fmt::Display) -> Self {
        Self {
            host: host.to_string(),
            failed: 1,
            error: Some(error.to_string()),
            ..Self::default()
        }
    }

    /// Adds `message` to the host's error: a rollback earlier in the run must stay visible.
    pub(crate) fn append_error(&mut self, message: String) {
        self.error = Some(match self.error.take() {
            Some(previous) => format!("{previous}; {message}"),
            None => message,
        });
    }

    /// What `plan` reports: the changes it would make and the services it would restart.
    pub fn from_plan(plan: &HostPlan) -> Self {
        Self {
            host: plan.host.clone(),
            ok: plan.unchanged(),
            changed: plan.changes.len(),
            changes: plan.changes.iter().map(ChangeReport::from).collect(),
            restarted: plan.restarts.clone(),
            ..Self::default()
        }
    }
}

/// Prints one progress line for a host on stderr (stdout is kept for the result).
pub fn progress(host: &str, message: &str) {
    eprintln!("[{host}] {message}");
}

/// The `kind` of a change as the human-readable plan prints it (the JSON's `kind`).
pub fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::File => "file",
        ChangeKind::Binary => "binary",
        ChangeKind::Package => "package",
        ChangeKind::Postgres => "postgres",
        ChangeKind::Rabbitmq => "rabbitmq",
        ChangeKind::Unit => "unit",
        ChangeKind::Service => "service",
        ChangeKind::User => "user",
    }
}
