//! provision binary.
fn main() {}
