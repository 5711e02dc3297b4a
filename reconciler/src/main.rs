//! The reconciler process. Settings: `APP_*` variables (see `config.rs`), e.g.
//! `APP_KAFKA__BROKERS`, `APP_REPLICA__URL`, `APP_STRIPE__API_BASE`, `APP_POLL__FIRST_MS`.

use std::sync::Arc;
use std::time::Duration;

use paystream_reconciler::config::ReconcilerConfig;
use paystream_reconciler::source;
use paystream_reconciler::worker::Worker;
use paystream_service::http::shutdown_signal;
use paystream_service::{Service, load_config};
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: ReconcilerConfig = load_config()?;
    let service = Service::start("reconciler", &cfg.database, cfg.log_format)?;
    let replica = PgPoolOptions::new()
        .max_connections(cfg.replica.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&cfg.replica.url)?;
    let stripe = Arc::new(cfg.stripe.gateway()?);
    let consumer = source::consumer(&cfg.kafka, service.metrics.clone())?;
    let worker = Worker::new(
        &cfg,
        service.primary.clone(),
        replica,
        stripe,
        service.metrics.clone(),
    )?;
    let mut work = tokio::spawn(async move { worker.run(&consumer, shutdown_signal()).await });
    let serve = service.serve(cfg.instance.clone(), cfg.listen_addr, axum::Router::new());
    tokio::select! {
        served = serve => {
            served?;
            // The worker saw the same signal and is draining.
            work.await??;
        }
        worked = &mut work => {
            worked??;
            anyhow::bail!("the worker stopped on its own");
        }
    }
    Ok(())
}
