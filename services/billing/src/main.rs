//! The `billing` binary: the services' shared `main`, then binds its health port and consumes
//! until SIGTERM.

use tokio::runtime::RuntimeFlavor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    service_common::service_main(
        "billing",
        RuntimeFlavor::MultiThread,
        |config: billing::Config| async move {
            let listener = service_common::bind(config.health_listen_addr).await?;
            billing::run(config, listener, service_common::shutdown_signal()).await
        },
    )
}
