//! Health endpoints and the serve loop with graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paystream_db::Primary;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::runtime::{Runtime, TaskState};

/// Who answers, and what readiness depends on.
#[derive(Clone)]
pub struct Health {
    pub service: &'static str,
    pub instance: String,
    pub primary: Primary,
    pub metrics: Arc<Metrics>,
    /// Its supervised background tasks, if it has any.
    pub runtime: Option<Runtime>,
}

impl Health {
    /// `/health/live` (the process answers) and `/health/ready` (it can reach the
    /// primary), plus an `x-served-by` header on every response of `app`, so that
    /// an operator behind nginx can tell which instance answered.
    pub fn wrap(self, app: Router) -> Router {
        let served_by =
            HeaderValue::from_str(&self.instance).unwrap_or(HeaderValue::from_static("unknown"));
        let metrics = self.metrics.clone();
        let health = Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(prometheus))
            .with_state(self);
        app.merge(health)
            .layer(axum::middleware::from_fn_with_state(metrics, observe))
            .layer(axum::middleware::map_response(
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

/// One span per request, carrying its request id (nginx's `X-Request-Id`, or a new one),
/// echoed in the response; one log line and one metrics sample when it ends. Headers
/// (which carry API keys) are never logged.
async fn observe(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = method_label(req.method());
    let span =
        tracing::info_span!("request", request_id = %request_id, method = method, route = %route);
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = res.status().as_u16().to_string();
    metrics.inc(
        "http_requests_total",
        "HTTP requests by route, method and status",
        &[("route", &route), ("method", method), ("status", &status)],
    );
    metrics.observe(
        "http_request_duration_seconds",
        "HTTP request latency by route",
        &[("route", &route), ("method", method)],
        took,
    );
    tracing::info!(parent: &span, status = res.status().as_u16(), latency_us = took.as_micros() as u64, "request");
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// A label value from a bounded set: HTTP's own methods, or `other`. Anyone can send any
/// token as a method; each would otherwise become a metrics series for ever.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", SEQ.fetch_add(1, Ordering::Relaxed))
}

async fn prometheus(State(h): State<Health>) -> impl IntoResponse {
    let gauges = [
        (
            "db_pool_connections",
            "connections open in the primary's pool",
            i64::from(h.primary.connections().0),
        ),
        (
            "db_pool_idle_connections",
            "idle connections in the primary's pool",
            h.primary.connections().1 as i64,
        ),
    ];
    (
        [("content-type", "text/plain; version=0.0.4")],
        h.metrics.render(&gauges),
    )
}

async fn live(State(h): State<Health>) -> impl IntoResponse {
    Json(json!({"status": "ok", "service": h.service, "instance": h.instance}))
}

async fn ready(State(h): State<Health>) -> impl IntoResponse {
    let probe = tokio::time::timeout(Duration::from_secs(2), h.primary.ping()).await;
    let primary = match probe {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: primary unreachable");
            "error"
        }
        Err(_) => "timeout",
    };
    let tasks: serde_json::Map<String, serde_json::Value> = h
        .runtime
        .as_ref()
        .map(Runtime::tasks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, state)| {
            let v = match state {
                TaskState::Running => json!("running"),
                TaskState::Restarting {
                    restarts,
                    last_error,
                } => json!({"state": "restarting", "restarts": restarts, "last_error": last_error}),
                TaskState::Failed { error } => json!({"state": "failed", "error": error}),
            };
            (name.to_owned(), v)
        })
        .collect();
    let tasks_ok = h.runtime.as_ref().is_none_or(Runtime::all_running);
    let ready = primary == "ok" && tasks_ok;
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({
            "status": if ready { "ready" } else { "unready" },
            "primary": primary,
            "tasks": tasks,
        })),
    )
}

/// Serves until `shutdown` is cancelled, then stops accepting and lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// SIGTERM or Ctrl-C. Only `Runtime::new` listens: one handler per process.
pub(crate) async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn method_labels_are_a_bounded_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        let invented: std::collections::HashSet<&str> = (0..1000)
            .map(|i| Method::from_bytes(format!("X{i}").as_bytes()).unwrap())
            .map(|m| method_label(&m))
            .collect();
        assert_eq!(invented.into_iter().collect::<Vec<_>>(), ["other"]);
    }
}
