//! Webhook receiver server. Settings: `APP_*` variables, e.g. `APP_WEBHOOK__SECRETS`
//! (comma-separated), `APP_STRIPE__API_BASE`, `APP_STRIPE__SECRET_KEY`.
//!
//! `paystream-webhook enabled-events` prints the event types its Stripe endpoint must be
//! subscribed to, one a line, and exits.

use std::time::Duration;

use paystream_service::{OnExit, Service, load_config};
use paystream_webhook::catchup;
use paystream_webhook::config::WebhookConfig;
use paystream_webhook::{AppState, router, unmatched_loop};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("enabled-events") {
        // A command's output, not a log line: to stdout, for scripts to read.
        let mut out = std::io::stdout().lock();
        for kind in paystream_core::gateway::WEBHOOK_EVENTS {
            std::io::Write::write_all(&mut out, format!("{kind}\n").as_bytes())?;
        }
        return Ok(());
    }
    let cfg: WebhookConfig = load_config()?;
    let service = Service::start(
        "webhook",
        env!("CARGO_PKG_VERSION"),
        &cfg.database,
        cfg.log_format,
    )?;
    let db = service.primary.clone();
    let state = AppState::new(db.clone(), &cfg.webhook, service.metrics.clone());
    anyhow::ensure!(
        !state.secrets.is_empty(),
        "APP_WEBHOOK__SECRETS is empty: no webhook could ever verify"
    );
    let orphan_after = Duration::from_secs(cfg.orphan_after_secs);
    let primary = db.clone();
    service
        .runtime
        .supervise("unmatched_events", OnExit::Restart, move |token| {
            unmatched_loop(primary.clone(), Duration::from_secs(2), orphan_after, token)
        });
    let catchup_every = Duration::from_secs(cfg.catchup_interval_secs);
    let stripe = cfg.stripe;
    service
        .runtime
        .supervise("stripe_catchup", OnExit::Restart, move |token| {
            catchup::run_loop(
                stripe.clone(),
                db.clone(),
                catchup_every,
                Duration::from_secs(3 * 24 * 3600),
                token,
            )
        });
    service
        .serve(cfg.instance, cfg.listen_addr, router(state))
        .await?;
    Ok(())
}
