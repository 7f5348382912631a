//! The one JSON shape of every 4xx and 5xx answered by any service of the platform.

use serde::{Deserialize, Serialize};

/// `{"error": "not_found", "message": "movie 7 does not exist"}`.
///
/// `error` is a stable, machine-readable code (snake_case); `message` is for people and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `validation_failed`, `not_found`, `bad_gateway`.
    pub error: String,
    /// Human-readable explanation; never carries a secret or an internal error chain.
    pub message: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
        }
    }
}
