//! The `gateway` binary: reads the configuration, binds the listener and runs until SIGTERM.

use anyhow::Context;
use gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `.env` is a convenience for local runs; in production the environment is set by systemd.
    let _ = dotenvy::dotenv();
    let config = Config::from_env();
    service_common::init_tracing();
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    gateway::run(config, listener, service_common::shutdown_signal()).await
}
