//! The reconciler process. Settings: `APP_*` variables (see `config.rs`), e.g.
//! `APP_KAFKA__BROKERS`, `APP_REPLICA__URL`, `APP_STRIPE__API_BASE`, `APP_POLL__FIRST_MS`.

use std::sync::Arc;

use paystream_db::Replica;
use paystream_reconciler::config::ReconcilerConfig;
use paystream_reconciler::source;
use paystream_reconciler::worker::Worker;
use paystream_service::{Service, load_config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: ReconcilerConfig = load_config()?;
    let service = Service::start("reconciler", &cfg.database, cfg.log_format)?;
    let replica = Replica::new(&cfg.replica.url, cfg.replica.max_connections as usize)?;
    let stripe = Arc::new(cfg.stripe.gateway()?);
    let consumer = source::consumer(&cfg.kafka, service.metrics.clone())?;
    let worker = Worker::new(
        &cfg,
        service.primary.clone(),
        replica,
        stripe,
        service.metrics.clone(),
    )?;
    // The worker drains when the runtime's token is cancelled (SIGTERM); if it stops on
    // its own, the runtime stops the service and `serve` returns its error.
    let shutdown = service.runtime.token();
    service.runtime.spawn_critical("cdc_worker", async move {
        worker
            .run(&consumer, shutdown.cancelled_owned())
            .await
            .map_err(|e| e.to_string())
    });
    service
        .serve(cfg.instance.clone(), cfg.listen_addr, axum::Router::new())
        .await?;
    Ok(())
}
