//! Plumbing shared by the api, webhook and reconciler binaries, so that each of them
//! holds only its own logic.

pub mod config;
pub mod http;
pub mod metrics;
pub mod telemetry;

pub use config::{ConfigError, DatabaseConfig, ServiceConfig};
pub use http::{Health, serve};
pub use metrics::Metrics;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database settings are invalid: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the service's config (`APP_CONFIG_FILE`, then `APP_*` variables), starts
/// logging, and serves `app` with the health endpoints until SIGTERM.
pub async fn run(service: &'static str, app: Router) -> Result<(), RunError> {
    let path = std::env::var_os("APP_CONFIG_FILE").map(PathBuf::from);
    let cfg: ServiceConfig = config::load(path.as_deref())?;
    telemetry::init(cfg.log_format);
    // Lazy: the process starts (and says it is unready) while the primary is down.
    let primary = PgPoolOptions::new()
        .max_connections(cfg.database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&cfg.database.url)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen_addr).await?;
    tracing::info!(service, instance = %cfg.instance, addr = %cfg.listen_addr, "listening");
    let health = Health {
        service,
        instance: cfg.instance,
        primary,
        metrics: Default::default(),
    };
    serve(listener, health.wrap(app)).await?;
    tracing::info!(service, "stopped");
    Ok(())
}
