//! What the three services truly share, and nothing more: the billing order message and its
//! validation, the queue names, the JSON error body, tracing set-up and the shutdown signal.
//!
//! No business logic lives here, and neither axum nor sqlx: each service owns its own HTTP and
//! database code.

pub mod error_body;
pub mod order;
pub mod shutdown;
pub mod telemetry;

pub use error_body::ErrorBody;
pub use order::{dead_letter_queue_name, BillingOrder, OrderError, DEFAULT_BILLING_QUEUE};
pub use shutdown::shutdown_signal;
pub use telemetry::init_tracing;
