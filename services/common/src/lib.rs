//! What the three services truly share, and nothing more: the billing order message and its
//! validation, the queue names, the JSON error body, tracing set-up, the shutdown signal, the
//! delays between reconnection attempts, and connection URLs that never show their password (with
//! the `amqp` feature, the broker's URL).
//!
//! No business logic lives here, and neither axum nor sqlx: each service owns its own HTTP and
//! database code.

#[cfg(feature = "amqp")]
pub mod amqp_url;
pub mod error_body;
pub mod order;
pub mod redact;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

#[cfg(feature = "amqp")]
pub use amqp_url::{AmqpUrl, AmqpUrlError};
pub use error_body::ErrorBody;
pub use order::{dead_letter_queue_name, BillingOrder, OrderError, DEFAULT_BILLING_QUEUE};
pub use redact::redact_url_password;
pub use retry::{retry_delays, RetryDelays};
pub use shutdown::shutdown_signal;
pub use telemetry::init_tracing;
