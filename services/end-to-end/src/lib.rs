//! Holds no code: the crate exists for `tests/audit.rs`, which drives the three service binaries.
