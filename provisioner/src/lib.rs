//! `provision`: infrastructure as code for the platform. The platform description, the inventory
//! and `.env` are rendered into a desired state per host (no network), which plan compares with
//! facts gathered over SSH and apply converges to.
//!
//! Two halves and their contract: [`render`] builds [`desired::DesiredHost`]s without any network;
//! [`converge`] reads hosts over SSH and brings them to that state without knowing about TOML or
//! templates.

pub mod cli;
pub mod converge;
pub mod desired;
pub mod pki;
pub mod render;
