//! Holds no code: the crate exists for `tests/audit.rs` (the audit on real binaries) and `benches/platform.rs` (speed and memory figures).
