//! Plumbing shared by the api, webhook and reconciler binaries, so that each of them
//! holds only its own logic.

pub mod config;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod stripe_calls;
pub mod telemetry;

pub use config::{ConfigError, DatabaseConfig, ServiceConfig};
pub use http::{Health, serve};
pub use metrics::Metrics;
pub use runtime::{OnExit, Runtime};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use paystream_db::{DbError, Primary};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("stopped: {0}")]
    Task(String),
}

/// Loads a service's typed config: the TOML file named by `APP_CONFIG_FILE` (if any),
/// then `APP_*` variables.
pub fn load_config<C: serde::de::DeserializeOwned>() -> Result<C, ConfigError> {
    let path = std::env::var_os("APP_CONFIG_FILE").map(PathBuf::from);
    config::load(path.as_deref())
}

/// How long background tasks get to finish after shutdown (a reconciler drains its polls
/// and deliveries and commits in this time).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// What every service runs on: logging, the primary's pool, the metrics registry and the
/// runtime that supervises its background tasks and owns its one signal handler.
pub struct Service {
    pub name: &'static str,
    pub primary: Primary,
    pub metrics: Arc<Metrics>,
    pub runtime: Runtime,
}

impl Service {
    /// Starts logging and opens the primary's pool lazily: the process starts (and says
    /// it is unready) while the primary is down. `version` is the deployable's own
    /// (`env!("CARGO_PKG_VERSION")` in its crate), for `paystream_build_info`.
    pub fn start(
        name: &'static str,
        version: &'static str,
        database: &DatabaseConfig,
        log_format: config::LogFormat,
    ) -> Result<Self, RunError> {
        telemetry::init(log_format);
        let primary = Primary::connect_lazy(&database.url, database.max_connections)?;
        let metrics = Arc::new(Metrics::for_service(name, version));
        Ok(Service {
            name,
            primary,
            runtime: Runtime::new(metrics.clone()),
            metrics,
        })
    }

    /// Serves `app` with the health and metrics endpoints until SIGTERM (or a fatal task
    /// ends), then waits for the background tasks to finish.
    pub async fn serve(
        self,
        instance: String,
        addr: SocketAddr,
        app: Router,
    ) -> Result<(), RunError> {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                // Tasks may already run (the reconciler's worker): stop them first.
                self.runtime.shutdown();
                let _ = self.runtime.wait(SHUTDOWN_GRACE).await;
                return Err(e.into());
            }
        };
        tracing::info!(service = self.name, instance = %instance, addr = %addr, "listening");
        let health = Health {
            service: self.name,
            instance,
            primary: self.primary,
            metrics: self.metrics,
            runtime: Some(self.runtime.clone()),
        };
        let served = serve(listener, health.wrap(app), self.runtime.token()).await;
        // However serving ended, everything else stops too, and is waited for.
        self.runtime.shutdown();
        let tasks = self.runtime.wait(SHUTDOWN_GRACE).await;
        tracing::info!(service = self.name, "stopped");
        served?;
        tasks.map_err(RunError::Task)
    }
}

/// A service with no settings of its own beyond `ServiceConfig`.
pub async fn run(name: &'static str, version: &'static str, app: Router) -> Result<(), RunError> {
    let cfg: ServiceConfig = load_config()?;
    Service::start(name, version, &cfg.database, cfg.log_format)?
        .serve(cfg.instance, cfg.listen_addr, app)
        .await
}
