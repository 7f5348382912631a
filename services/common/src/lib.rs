//! What the three services truly share, and nothing more: their `main` (`service_main`), the
//! billing order message and its validation, the billing queue (name rules, dead-letter queue,
//! and with the `amqp` feature its one declaration), the JSON error body, error chains for logs,
//! tracing set-up, the shutdown signal, the delays between reconnection attempts, connection
//! URLs that never show their password (with the `amqp` feature, the broker's URL, in clear or
//! over TLS), and with the `tls` feature the rustls configurations that trust the platform CA.
//!
//! No business logic lives here, and neither axum nor sqlx queries: each service owns its own HTTP
//! and database code (the `postgres` feature only parses `DATABASE_URL` and tells which of its
//! errors mean the database is unreachable).

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "amqp")]
pub mod amqp_url;
#[cfg(feature = "postgres")]
pub mod database_url;
pub mod error_body;
pub mod error_chain;
pub mod order;
pub mod queue;
pub mod redact;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg(feature = "amqp")]
pub use amqp_url::{AmqpUrl, AmqpUrlError, AmqpUrls};
#[cfg(feature = "postgres")]
pub use database_url::{is_unreachable, DatabaseUrl, DatabaseUrlParser, InvalidDatabaseUrl};
pub use error_body::ErrorBody;
pub use error_chain::{error_chain, ErrorChain};
pub use order::{BillingOrder, OrderError};
pub use queue::{dead_letter_queue_name, queue_name, DEFAULT_BILLING_QUEUE};
#[cfg(feature = "amqp")]
pub use queue::{declare_billing_queue, QueueError};
pub use redact::redact_url_password;
pub use retry::{retry_delays, RetryDelays};
pub use service::{bind, service_main};
pub use shutdown::shutdown_signal;
pub use telemetry::init_tracing;
