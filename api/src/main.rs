//! Payment API server. Settings: `APP_CONFIG_FILE` (TOML) then `APP_*` variables, e.g.
//! `APP_STRIPE__API_BASE`, `APP_STRIPE__SECRET_KEY`, `APP_DATABASE__URL`.

use paystream_api::config::ApiConfig;
use paystream_api::{AppState, router};
use paystream_service::runtime::tick;
use paystream_service::{OnExit, Service, load_config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: ApiConfig = load_config()?;
    let service = Service::start(
        "api",
        env!("CARGO_PKG_VERSION"),
        &cfg.database,
        cfg.log_format,
    )?;
    let state = AppState::new(service.primary.clone(), &cfg, service.metrics.clone())?;
    let (gate, primary, metrics) = (
        state.keys.clone(),
        service.primary.clone(),
        service.metrics.clone(),
    );
    service
        .runtime
        .supervise("key_changes", OnExit::Restart, move |token| {
            let (gate, primary, metrics) = (gate.clone(), primary.clone(), metrics.clone());
            async move {
                gate.listen(&primary, &metrics, token).await;
                Ok(())
            }
        });
    if cfg.analytics.refresh_ms > 0 {
        let every = std::time::Duration::from_millis(cfg.analytics.refresh_ms);
        let primary = service.primary.clone();
        service
            .runtime
            .supervise("analytics_rollups", OnExit::Restart, move |token| {
                let primary = primary.clone();
                async move {
                    while tick(&token, every).await {
                        paystream_analytics::refresh::refresh_once(&primary).await;
                    }
                    Ok(())
                }
            });
    }
    service
        .serve(cfg.instance, cfg.listen_addr, router(state))
        .await?;
    Ok(())
}
