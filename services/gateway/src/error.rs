//! The gateway's one error type: every failure a handler can meet, each becoming an HTTP status and
//! the platform's JSON [`ErrorBody`]. Internal details go to the log, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use service_common::{ErrorBody, ErrorChain, OrderError};

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400 `invalid_json` when the body is not JSON at all; otherwise 422 `validation_failed`:
    /// the billing order is readable but not acceptable, and the message names the field. The
    /// same split as inventory's: 400 for a request that cannot be read, 422 for content refused.
    #[error("{0}")]
    InvalidOrder(#[from] OrderError),

    /// 400: the `Idempotency-Key` header is empty, too long, repeated or not printable ASCII.
    #[error(
        "Idempotency-Key must be one header of 1 to {} printable ASCII characters without spaces",
        crate::billing::MAX_IDEMPOTENCY_KEY_CHARS
    )]
    InvalidIdempotencyKey,
    /// 408: the request body stopped arriving (the server's body read timeout).
    #[error("the request body stopped arriving before it was complete")]
    RequestTimeout,

    /// 413: the request body is larger than the configured limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },

    /// 415: the endpoint only accepts `application/json`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,

    /// 400: the request body could not be read (client went away, bad chunking).
    #[error("cannot read the request body")]
    BadRequestBody(#[source] axum::Error),

    /// 502: inventory could not be reached (connection refused, reset, malformed answer).
    #[error("inventory is unreachable")]
    BadGateway(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// 504: inventory did not answer within the configured time.
    #[error("inventory did not answer in time")]
    GatewayTimeout,

    /// 503: the broker is unreachable, or did not confirm the order (nack, unroutable, timeout).
    #[error("the order could not be confirmed by the message broker: {0}")]
    BrokerUnavailable(#[from] crate::billing::PublishError),

    /// 401: a writing request without a valid bearer token (when authentication is on).
    #[error("{reason}")]
    Unauthenticated {
        reason: String,
        /// Whether a token was presented (then `error="invalid_token"`, RFC 6750).
        presented: bool,
    },

    /// 403: a valid token without the scope the request needs.
    #[error("the token does not grant the scope `{scope}` this request needs")]
    Forbidden { scope: &'static str },

    /// 429: this client address sent more than its rate limit allows.
    #[error("too many requests from {client}: at most {per_second} per second (bursts of {burst}); retry in {} s", retry_after_seconds(*retry_after))]
    RateLimited {
        client: std::net::IpAddr,
        per_second: std::num::NonZeroU32,
        burst: std::num::NonZeroU32,
        retry_after: std::time::Duration,
    },

    /// 503: a dependency `/ready` checks is not there.
    #[error("{0}")]
    NotReady(String),

    /// 500: a bug of ours; the detail is logged, the client gets an opaque message.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// The HTTP status this error becomes.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidOrder(OrderError::NotJson(_))
            | Self::BadRequestBody(_)
            | Self::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::InvalidOrder(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::BrokerUnavailable(_) | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code put in [`ErrorBody::error`].
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidOrder(OrderError::NotJson(_)) => "invalid_json",
            Self::InvalidOrder(_) => "validation_failed",
            Self::BadRequestBody(_) => "bad_request",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unauthenticated { .. } => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::BadGateway(_) => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
            Self::BrokerUnavailable(_) => "broker_unavailable",
            Self::NotReady(_) => "not_ready",
            Self::Internal(_) => "internal_error",
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1 (`Retry-After` counts in seconds).
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        // Server-side failures are logged with their whole cause chain; client errors are not
        // worth more than a debug line.
        if status.is_server_error() {
            tracing::error!(error = %ErrorChain(&self), status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
        }
        let retry_after = match &self {
            Self::BrokerUnavailable(_) | Self::NotReady(_) => Some(1),
            Self::RateLimited { retry_after, .. } => Some(retry_after_seconds(*retry_after)),
            _ => None,
        };
        let challenge = match &self {
            Self::Unauthenticated {
                presented: false, ..
            } => Some(r#"Bearer realm="streaming-platform""#.to_owned()),
            Self::Unauthenticated {
                presented: true, ..
            } => Some(r#"Bearer realm="streaming-platform", error="invalid_token""#.to_owned()),
            Self::Forbidden { scope } => Some(format!(
                r#"Bearer realm="streaming-platform", error="insufficient_scope", scope="{scope}""#
            )),
            _ => None,
        };
        let body = ErrorBody::new(self.code(), self.to_string());
        let mut response = (status, Json(body)).into_response();
        if let Some(challenge) = challenge.and_then(|value| HeaderValue::from_str(&value).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
