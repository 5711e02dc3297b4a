//! Webhook receiver server. Settings: `APP_*` variables, e.g. `APP_WEBHOOK__SECRETS`
//! (comma-separated), `APP_STRIPE__API_BASE`, `APP_STRIPE__SECRET_KEY`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paystream_service::config::{DatabaseConfig, LogFormat};
use paystream_service::{Health, Metrics, config, serve, telemetry};
use paystream_webhook::catchup::{self, StripeApi};
use paystream_webhook::{AppState, WebhookSettings, router, unmatched_loop};
use serde::Deserialize;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, Deserialize)]
struct Config {
    listen_addr: std::net::SocketAddr,
    instance: String,
    database: DatabaseConfig,
    #[serde(default)]
    log_format: LogFormat,
    webhook: WebhookSettings,
    stripe: StripeApi,
    #[serde(default = "default_catchup_secs")]
    catchup_interval_secs: u64,
}

fn default_catchup_secs() -> u64 {
    60
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::var_os("APP_CONFIG_FILE").map(PathBuf::from);
    let cfg: Config = config::load(path.as_deref())?;
    telemetry::init(cfg.log_format);
    let db = PgPoolOptions::new()
        .max_connections(cfg.database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&cfg.database.url)?;
    let metrics = Arc::new(Metrics::default());
    let state = AppState::new(db.clone(), &cfg.webhook, metrics.clone());
    anyhow::ensure!(
        !state.secrets.is_empty(),
        "APP_WEBHOOK__SECRETS is empty: no webhook could ever verify"
    );
    tokio::spawn(unmatched_loop(db.clone(), Duration::from_secs(2)));
    tokio::spawn(catchup::run_loop(
        cfg.stripe,
        db.clone(),
        Duration::from_secs(cfg.catchup_interval_secs),
        Duration::from_secs(3 * 24 * 3600),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.listen_addr).await?;
    tracing::info!(service = "webhook", instance = %cfg.instance, addr = %cfg.listen_addr, "listening");
    let health = Health {
        service: "webhook",
        instance: cfg.instance,
        primary: db,
        metrics,
    };
    serve(listener, health.wrap(router(state))).await?;
    Ok(())
}
