//! The `gateway` binary: the services' shared `main`, then binds its port and serves until SIGTERM.
//! Its runtime is the main thread alone, which is also its first serving thread (see
//! [`gateway::run`]).

use tokio::runtime::RuntimeFlavor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    service_common::service_main(
        "gateway",
        RuntimeFlavor::CurrentThread,
        |config: gateway::Config| async move {
            let listener = service_common::bind(config.listen_addr).await?;
            gateway::run(config, listener, service_common::shutdown_signal()).await
        },
    )
}
