//! The inventory service's one integration-test binary: handler tests on a fresh, migrated
//! PostgreSQL database each (`#[sqlx::test]`, which reads `DATABASE_URL`), and a test of the real
//! server over TCP.

mod client_errors;
mod database_tls;
mod health;
mod helpers;
mod movies;
mod pages;
mod server;
