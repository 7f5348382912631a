//! The gateway's integration tests, one binary: a real gateway on a loopback port, in front of
//! upstream HTTP servers started by the tests (an echo app, or the real inventory service on a
//! fresh database) and the real RabbitMQ named by `AMQP_URL`.

// Tests fail loudly by design; `expect` everywhere would only repeat the assertion messages.
#![allow(clippy::unwrap_used)]

mod amqp;
mod auth;
mod billing;
mod helpers;
mod openapi;
mod proxy;
mod rate_limit;
mod routing;
mod shutdown;
mod slow_clients;
mod tls;
