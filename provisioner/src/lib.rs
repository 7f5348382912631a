//! `provision`: infrastructure as code for the platform. The inventory and `.env` are rendered
//! into a desired state per host (no network), which plan compares with facts gathered over SSH
//! and apply converges to.

pub mod binaries;
pub mod desired;
pub mod env_file;
pub mod inventory;
pub mod render;

pub mod apply;
pub mod cli;
pub mod facts;
pub mod plan;
pub mod scram;
pub mod ssh;
pub mod status;
pub mod transport;
