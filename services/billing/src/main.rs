//! billing binary.
fn main() {}
