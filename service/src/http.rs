//! Health endpoints and the serve loop with graceful shutdown.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;

/// Who answers, and what readiness depends on.
#[derive(Clone)]
pub struct Health {
    pub service: &'static str,
    pub instance: String,
    pub primary: PgPool,
}

impl Health {
    /// `/health/live` (the process answers) and `/health/ready` (it can reach the
    /// primary), plus an `x-served-by` header on every response of `app`, so that
    /// an operator behind nginx can tell which instance answered.
    pub fn wrap(self, app: Router) -> Router {
        let served_by =
            HeaderValue::from_str(&self.instance).unwrap_or(HeaderValue::from_static("unknown"));
        let health = Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .with_state(self);
        app.merge(health).layer(axum::middleware::map_response(
            move |mut res: axum::response::Response| {
                let served_by = served_by.clone();
                async move {
                    res.headers_mut().insert("x-served-by", served_by);
                    res
                }
            },
        ))
    }
}

async fn live(State(h): State<Health>) -> impl IntoResponse {
    Json(json!({"status": "ok", "service": h.service, "instance": h.instance}))
}

async fn ready(State(h): State<Health>) -> impl IntoResponse {
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&h.primary),
    )
    .await;
    match probe {
        Ok(Ok(_)) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "primary": "ok"})),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: primary unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unready", "primary": "error"})),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "primary": "timeout"})),
        ),
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops accepting and lets in-flight requests finish.
pub async fn serve(listener: TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received, draining");
}
