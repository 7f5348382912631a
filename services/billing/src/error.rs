//! The worker's one error type, and how the health listener turns "not ready" into a JSON 503.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use service_common::ErrorBody;

/// Everything that can stop a consumer session or the worker. None of these is shown to a client:
/// the health listener only ever answers [`NotReady`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL refused or could not be reached; the batch is retried, nothing is acked.
    #[error("database error")]
    Database(#[from] sqlx::Error),

    /// The embedded migrations could not be applied.
    #[error("cannot apply the database migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// The connection declaring the queues failed; the session is rebuilt.
    #[error("RabbitMQ error")]
    Amqp(#[from] lapin::Error),

    /// The consuming connection failed, or the broker cancelled the subscription (the queue was
    /// deleted); the session is rebuilt.
    #[error("RabbitMQ consuming connection")]
    Consuming(#[from] service_common::amqp::Error),

    /// A broker node did not complete the connection in time; the next node is tried.
    #[error("no answer from the broker within {0:?} of connecting")]
    ConnectTimeout(std::time::Duration),

    /// The billing queues could not be declared (or moved from classic to quorum queues yet);
    /// the session is rebuilt.
    #[error("cannot declare the billing queues")]
    Queue(#[from] service_common::QueueError),

    /// The broker did not confirm a dead-lettered message, so the original is not acked.
    #[error("the broker refused to take dead-lettered message {delivery_tag}")]
    DeadLetterNotConfirmed { delivery_tag: u64 },

    /// The health listener could not bind or serve.
    #[error("health listener failed")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True when retrying the same rows cannot help because PostgreSQL rejects the data itself
    /// (SQLSTATE class 22, data exception, or 23, integrity constraint violation), or because
    /// the rows cannot even be encoded for it (a field past the binary COPY's limits), as
    /// opposed to an outage, which retrying does cure.
    pub fn is_rejected_data(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            Self::Database(sqlx::Error::Encode(_)) => true,
            _ => false,
        }
    }
}

/// `/ready` answered 503: which dependency is not available. Rendered as the platform's
/// [`ErrorBody`] with the code `not_ready`.
#[derive(Debug)]
pub struct NotReady(pub &'static str);

impl IntoResponse for NotReady {
    fn into_response(self) -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new("not_ready", self.0)),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_that_cannot_be_encoded_are_rejected_data_and_an_outage_is_not() {
        let encode = Error::Database(sqlx::Error::Encode("a field longer than 2 GiB".into()));
        assert!(encode.is_rejected_data());
        for outage in [
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Database(sqlx::Error::Io(std::io::Error::other("connection reset"))),
            Error::Consuming(service_common::amqp::Error::Cancelled),
        ] {
            assert!(!outage.is_rejected_data(), "{outage:?}");
        }
    }
}
