//! The reconciler process. Settings: `APP_*` variables (see `config.rs`), e.g.
//! `APP_KAFKA__BROKERS`, `APP_REPLICA__URL`, `APP_STRIPE__API_BASE`, `APP_POLL__FIRST_MS`.

use std::sync::Arc;
use std::time::Instant;

use paystream_core::TokenBucket;
use paystream_db::Replica;
use paystream_reconciler::config::ReconcilerConfig;
use paystream_reconciler::refunds::worker::RefundWorker;
use paystream_reconciler::source;
use paystream_reconciler::worker::Worker;
use paystream_reconciler::worker::engine::StripeBudget;
use paystream_service::runtime::OnExit;
use paystream_service::stripe_calls::Counted;
use paystream_service::{Service, load_config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cfg: ReconcilerConfig = load_config()?;
    // A property that may not be set stops the start, not the first consumer.
    cfg.kafka.client_config()?;
    let service = Service::start(
        "reconciler",
        env!("CARGO_PKG_VERSION"),
        &cfg.database,
        cfg.log_format,
    )?;
    let replica = Replica::new(&cfg.replica.url, cfg.replica.max_connections as usize)?;
    let stripe = Arc::new(Counted::new(cfg.stripe.gateway()?, service.metrics.clone()));
    // Before any worker publishes: every status message carries its schema's id.
    paystream_reconciler::registry::register_status_schemas(&mut cfg.kafka).await?;
    // One Stripe budget for every poll of this instance, payments and refunds, kept
    // across restarts of either worker (the payment worker sizes it to its partitions).
    let budget = StripeBudget::new(TokenBucket::new(1, 1, Instant::now()));
    let cfg = Arc::new(cfg);
    // A worker that stops on its own (the broker lost an update it was publishing, say)
    // is started again, with a fresh consumer that rejoins the group and replays from the
    // last committed offset: what restarting the process would do, without waiting for
    // something outside to do it. What a restart cannot mend (a run of undecodable
    // records) stops the service. Each drains when the runtime's token is cancelled.
    {
        let rt = service.runtime.clone();
        let (cfg, primary, replica, stripe, metrics, budget) = (
            cfg.clone(),
            service.primary.clone(),
            replica.clone(),
            stripe.clone(),
            service.metrics.clone(),
            budget.clone(),
        );
        service
            .runtime
            .supervise("cdc_worker", OnExit::Restart, move |token| {
                let rt = rt.clone();
                let (cfg, primary, replica, stripe, metrics, budget) = (
                    cfg.clone(),
                    primary.clone(),
                    replica.clone(),
                    stripe.clone(),
                    metrics.clone(),
                    budget.clone(),
                );
                async move {
                    let consumer =
                        source::consumer(&cfg.kafka, metrics.clone()).map_err(|e| e.to_string())?;
                    let worker = Worker::new(&cfg, primary, replica, stripe, metrics, budget)
                        .map_err(|e| e.to_string())?;
                    match worker.run(&consumer, token.cancelled_owned()).await {
                        Err(e) if e.is_permanent() => {
                            rt.fail("cdc_worker", e.to_string());
                            Ok(())
                        }
                        ended => ended.map_err(|e| e.to_string()),
                    }
                }
            });
    }
    {
        let (cfg, primary, replica, stripe, metrics) = (
            cfg.clone(),
            service.primary.clone(),
            replica,
            stripe,
            service.metrics.clone(),
        );
        service
            .runtime
            .supervise("refund_worker", OnExit::Restart, move |token| {
                let (cfg, primary, replica, stripe, metrics, budget) = (
                    cfg.clone(),
                    primary.clone(),
                    replica.clone(),
                    stripe.clone(),
                    metrics.clone(),
                    budget.clone(),
                );
                async move {
                    let consumer = source::refund_consumer(&cfg.kafka, metrics.clone())
                        .map_err(|e| e.to_string())?;
                    RefundWorker::new(&cfg, primary, replica, stripe, budget, metrics)
                        .map_err(|e| e.to_string())?
                        .run(&consumer, token.cancelled_owned())
                        .await
                        .map_err(|e| e.to_string())
                }
            });
    }
    service
        .serve(cfg.instance.clone(), cfg.listen_addr, axum::Router::new())
        .await?;
    Ok(())
}
