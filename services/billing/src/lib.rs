//! The billing worker: consumes billing orders from a durable RabbitMQ queue into PostgreSQL,
//! acking each message only after its row is committed, and serves /health and /ready.
//!
//! Code map: [`config`] (environment), [`consumer`] (the pure `handle` step and the batch loop),
//! [`orders`] (the table; billing is its only writer), [`health`] (HTTP probes), [`error`].

pub mod config;
pub mod consumer;
pub mod error;
pub mod health;
pub mod orders;

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use service_common::{is_unreachable, ErrorChain};
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use consumer::{handle, ConsumerSettings, Outcome, Readiness};
pub use error::Error;
pub use service_common::DatabaseUrl;

/// The embedded schema; applied at start-up.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A pool that connects on first use, so the worker starts (and `/health` answers) even while
/// PostgreSQL is down.
pub fn lazy_pool(database_url: &DatabaseUrl) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(database_url.connect_options().clone())
}

/// Runs the worker until `shutdown` completes: serves /health and /ready on `listener`, applies
/// the migrations (retrying while PostgreSQL is down), consumes, and on shutdown finishes the
/// in-flight batch.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    http_serve::metrics::init("billing", env!("CARGO_PKG_VERSION"));
    let broker = config.broker()?;
    let pool = lazy_pool(&config.database_url);
    let readiness = Readiness::default();
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    info!(%address, queue = %config.billing_queue, "billing health listener ready");

    // One stop for both halves: cancelled by the shutdown signal, or by the consumer when it ends
    // on its own (a fatal error), so the health listener never outlives the worker.
    let stop = CancellationToken::new();

    let app = health::router(health::HealthState {
        pool: pool.clone(),
        readiness: readiness.clone(),
    });
    let server = async {
        http_serve::serve(
            listener,
            app,
            config.server.limits(),
            stop.clone().cancelled_owned(),
        )
        .await
        .context("health listener failed")
    };

    let worker = async {
        let settings = config.consumer_settings();
        let result = async {
            tokio::select! {
                migrated = migrate_with_retry(&pool, settings.max_backoff) => migrated?,
                () = stop.cancelled() => return Ok(()),
            }
            consumer::run(
                pool.clone(),
                broker,
                settings,
                readiness,
                stop.clone().cancelled_owned(),
            )
            .await
        }
        .await;
        stop.cancel();
        result.context("billing consumer failed")
    };

    let both = async { tokio::join!(server, worker) };
    tokio::pin!(both);
    let (served, consumed) = tokio::select! {
        out = &mut both => out,
        () = shutdown => {
            info!("shutdown requested");
            stop.cancel();
            both.await
        }
    };
    pool.close().await;
    consumed?;
    served?;
    info!("billing stopped");
    Ok(())
}

/// Applies the migrations, retrying with backoff while PostgreSQL is unreachable.
async fn migrate_with_retry(pool: &PgPool, max_backoff: Duration) -> Result<(), Error> {
    let mut delays = service_common::retry_delays(max_backoff);
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(err)) if is_unreachable(&err) => {
                warn!(error = %ErrorChain(&err), "database unavailable; retrying migrations");
            }
            Err(err) => return Err(err.into()),
        }
        tokio::time::sleep(delays.next_delay()).await;
    }
}
