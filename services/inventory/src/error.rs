//! The one error type of the inventory service and how each variant becomes an HTTP answer: a status
//! and a `service_common::ErrorBody` JSON body, for every 4xx and 5xx alike.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use service_common::{is_unreachable, ErrorBody};

/// Everything that can go wrong while answering a request. Client mistakes are 4xx with a message
/// that says what to fix; server-side faults are opaque 5xx whose detail only goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400 `invalid_json`: the body is not syntactically valid JSON.
    #[error("{0}")]
    InvalidJson(String),

    /// 400 `invalid_path`: a path parameter, such as a movie id, is not what the route expects.
    #[error("{0}")]
    InvalidPath(String),

    /// 400 `invalid_query`: the query string cannot be understood.
    #[error("{0}")]
    InvalidQuery(String),

    /// 404 `not_found`: no such movie (no such route is `http_serve::route_not_found`).
    #[error("{0}")]
    NotFound(String),

    /// 413 `payload_too_large`: the body exceeds the service's limit.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },

    /// 415 `unsupported_media_type`: a body was expected with `Content-Type: application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),

    /// 422 `validation_failed`: well-formed JSON whose content is not acceptable (missing or empty
    /// title, wrong types, text too long…).
    #[error("{0}")]
    Validation(String),

    /// 408 `request_timeout`: the request body stopped arriving (the server's body read timeout).
    #[error("the request body stopped arriving before it was complete")]
    RequestTimeout,

    /// 503 `timeout`: the service did not answer within its request timeout.
    #[error("the request took too long to process")]
    Timeout,

    /// 503 `not_ready`: a dependency (the database) does not answer; said by `/ready`.
    #[error("{0}")]
    NotReady(String),

    /// 503 `database_unavailable` when the database cannot be reached, 500 `internal_error` for any
    /// other database fault. Either way the client sees no detail; the log has it.
    #[error("database error")]
    Database(#[from] sqlx::Error),

    /// 500 `internal_error`: a bug on our side; the detail is logged, not shown.
    #[error("{0}")]
    Internal(String),
}

/// A convenient alias for handler results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error becomes.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidPath(_) | Self::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Timeout | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(err) if is_unreachable(err) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidPath(_) => "invalid_path",
            Self::InvalidQuery(_) => "invalid_query",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Validation(_) => "validation_failed",
            Self::Timeout => "timeout",
            Self::RequestTimeout => "request_timeout",
            Self::NotReady(_) => "not_ready",
            Self::Database(err) if is_unreachable(err) => "database_unavailable",
            Self::Database(_) | Self::Internal(_) => "internal_error",
        }
    }

    /// What the client is told. Server-side faults say nothing about their cause.
    fn public_message(&self) -> String {
        match self {
            Self::Database(err) if is_unreachable(err) => {
                "the database is unavailable; try again later".to_owned()
            }
            Self::Database(_) | Self::Internal(_) => "an internal error occurred".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Database(err) => tracing::error!(error = %err, ?err, "database error"),
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::Timeout | Self::NotReady(_) => {
                tracing::warn!(error = %self, "service unavailable")
            }
            _ => tracing::debug!(error = %self, %status, "client error"),
        }
        let body = ErrorBody::new(self.code(), self.public_message());
        (status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(err) => {
                Self::InvalidJson(format!("the body is not valid JSON: {}", innermost(&err)))
            }
            // The movie's own deserializer words these (`title must be a string or null`).
            JsonRejection::JsonDataError(err) => Self::Validation(innermost(&err)),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType(
                "expected a body with `Content-Type: application/json`".to_owned(),
            ),
            JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge {
                    limit: crate::MAX_BODY_BYTES,
                }
            }
            // The client stopped sending its body (http_serve's body read timeout).
            JsonRejection::BytesRejection(err) if http_serve::is_body_timeout(&err) => {
                Self::RequestTimeout
            }
            // The client hung up or sent a broken body: still its fault, never a 5xx.
            JsonRejection::BytesRejection(err) => {
                Self::InvalidJson(format!("the body could not be read: {}", innermost(&err)))
            }
            other => Self::InvalidJson(format!("the body cannot be read: {}", innermost(&other))),
        }
    }
}

impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::FailedToDeserializePathParams(err) => {
                Self::InvalidPath(format!("the path is invalid: {}", innermost(&err)))
            }
            // A route declared without the parameter its handler extracts: our bug.
            other => Self::Internal(other.body_text()),
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidQuery(format!(
            "the query string is invalid: {}",
            innermost(&rejection)
        ))
    }
}

/// The deepest cause of a rejection: the parser's own words about the input, without axum's
/// "Failed to deserialize …" preamble.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
