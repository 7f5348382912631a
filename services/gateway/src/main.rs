//! gateway binary.
fn main() {}
