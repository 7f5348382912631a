//! inventory binary.
fn main() {}
