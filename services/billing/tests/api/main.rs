//! Integration tests of the billing worker against the real PostgreSQL and RabbitMQ of the machine:
//! each test gets a fresh migrated database (`#[sqlx::test]`) and its own uniquely named queue.
//! One test binary, as for the gateway and inventory.

mod consumer;
mod health;
mod helpers;
mod migration;
mod orders;
mod outages;
