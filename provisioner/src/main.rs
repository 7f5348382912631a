//! The `provision` command line: parses arguments and runs the command.

fn main() {}
