//! Payment API server. Settings: `APP_CONFIG_FILE` (TOML) then `APP_*` variables, e.g.
//! `APP_STRIPE__API_BASE`, `APP_STRIPE__SECRET_KEY`, `APP_DATABASE__URL`.

use std::path::PathBuf;
use std::time::Duration;

use paystream_api::config::ApiConfig;
use paystream_api::{AppState, router};
use paystream_service::{Health, config, serve, telemetry};
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::var_os("APP_CONFIG_FILE").map(PathBuf::from);
    let cfg: ApiConfig = config::load(path.as_deref())?;
    telemetry::init(cfg.log_format);
    let db = PgPoolOptions::new()
        .max_connections(cfg.database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&cfg.database.url)?;
    let metrics = std::sync::Arc::new(paystream_service::Metrics::default());
    let state = AppState::new(db.clone(), &cfg, metrics.clone())?;
    let listener = tokio::net::TcpListener::bind(cfg.listen_addr).await?;
    tracing::info!(service = "api", instance = %cfg.instance, addr = %cfg.listen_addr, "listening");
    let health = Health {
        service: "api",
        instance: cfg.instance,
        primary: db,
        metrics,
    };
    serve(listener, health.wrap(router(state))).await?;
    Ok(())
}
