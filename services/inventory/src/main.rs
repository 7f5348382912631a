//! The `inventory` binary: the services' shared `main`, then binds its port and serves until
//! SIGTERM.

use tokio::runtime::RuntimeFlavor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    service_common::service_main(
        "inventory",
        RuntimeFlavor::MultiThread,
        |config: inventory::Config| async move {
            let listener = service_common::bind(config.listen_addr).await?;
            inventory::run(config, listener, service_common::shutdown_signal()).await
        },
    )
}
