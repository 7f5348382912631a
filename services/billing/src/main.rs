//! The `billing` binary: reads its configuration, installs tracing, and runs the worker until
//! SIGTERM or Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A `.env` file is a convenience for local runs; in production the environment is set by systemd.
    let _ = dotenvy::dotenv();
    let config = billing::Config::parse();
    service_common::init_tracing();
    match billing::run(config, service_common::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "billing failed");
            std::process::ExitCode::FAILURE
        }
    }
}
