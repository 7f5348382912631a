//! The `inventory` binary: reads its configuration, binds its port and serves until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use inventory::Config;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    // `.env` is a convenience for local runs; its absence is normal, a malformed one is not.
    if let Err(err) = dotenvy::dotenv() {
        if !err.not_found() {
            eprintln!("error: cannot read .env: {err}");
            return ExitCode::FAILURE;
        }
    }
    let config = Config::parse();
    service_common::init_tracing();
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "inventory failed");
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    inventory::run(config, listener, service_common::shutdown_signal()).await
}
