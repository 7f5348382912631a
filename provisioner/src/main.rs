//! The `provision` command line: parses arguments, runs the command, prints the error chain and
//! picks the exit code (plan: 0 nothing to change, 2 changes, 1 error; others 0 or 1).

use std::process::ExitCode;

use clap::Parser;
use provisioner::cli::{run, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
