//! The provisioner's one integration-test binary: each module tests one part against real
//! neighbours where they can run here (local PostgreSQL, RabbitMQ, sshd, systemd-analyze) and a
//! scripted fake transport where they cannot.

mod apply;
mod facts;
mod fixtures;
mod json;
mod monitoring;
mod patroni;
mod plan;
mod platform;
mod render;
mod ssh;
mod status;
