//! The `main` every service binary shares, so the three start, fail and report the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::runtime::RuntimeFlavor;

/// Reads `.env` when there is one (a convenience for local runs: in production systemd sets the
/// environment; a malformed file is refused, without echoing its lines, which may hold
/// passwords), parses the configuration (clap prints its message and exits 2 on a bad value), sets
/// up tracing, then runs `serve` on a runtime of the given flavor until it returns: a
/// multi-threaded one, or one on the main thread alone (`CurrentThread`). An error is logged
/// and printed on stderr with its cause chain, one cause per line; the exit code is then 1.
pub fn service_main<C, F>(name: &str, flavor: RuntimeFlavor, serve: impl FnOnce(C) -> F) -> ExitCode
where
    C: clap::Parser,
    F: Future<Output = anyhow::Result<()>>,
{
    if let Err(error) = dotenvy::dotenv() {
        if !error.not_found() {
            let reason = match error {
                dotenvy::Error::LineParse(_, index) => format!("cannot parse it at byte {index}"),
                other => other.to_string(),
            };
            eprintln!("error: .env: {reason}");
            return ExitCode::FAILURE;
        }
    }
    let config = C::parse();
    if let Err(message) = crate::init_tracing() {
        eprintln!("error: {message}");
        return ExitCode::FAILURE;
    }
    let runtime = match flavor {
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let result = runtime
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(serve(config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{name} failed");
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The service's listener: the socket systemd passes when the unit is socket-activated
/// (`LISTEN_FDS`, for this process), else a new one on `address`; the error names it.
///
/// A socket from systemd outlives the process: while the service restarts, new connections wait
/// in its accept queue instead of being refused.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let mut passed = listenfd::ListenFd::from_env();
    if passed.len() > 0 {
        let listener = passed
            .take_tcp_listener(0)
            .context("the socket systemd passed (LISTEN_FDS) is unusable")?
            .context("the socket systemd passed (LISTEN_FDS) is not a TCP listener")?;
        listener
            .set_nonblocking(true)
            .context("cannot make the passed socket non-blocking")?;
        let listener = TcpListener::from_std(listener).context("cannot use the passed socket")?;
        let local = listener
            .local_addr()
            .context("cannot read the passed socket's address")?;
        if local != address {
            tracing::warn!(%local, configured = %address, "the socket systemd passed is not on LISTEN_ADDR; serving on it");
        }
        return Ok(listener);
    }
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}
