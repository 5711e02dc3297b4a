//! The Stripe webhook receiver. `POST /webhook/stripe` verifies the signature on the raw
//! bytes before anything else, then stores and applies the event in one transaction.
//! Background loops retry events that matched no payment yet and catch up on events
//! Stripe could not deliver.

pub mod catchup;
pub mod config;
pub mod events;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use paystream_db::Primary;
use paystream_db::events::Via;
use paystream_service::Metrics;
use paystream_service::runtime::tick;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Stripe's events are a few KB; anything near this is not one of them.
pub const BODY_LIMIT: usize = 256 * 1024;

#[derive(Clone, Deserialize)]
pub struct WebhookSettings {
    /// Endpoint secrets, comma-separated: during a roll, the old and the new.
    pub secrets: String,
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: i64,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("secrets", &"<redacted>")
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

fn default_tolerance() -> i64 {
    300
}

#[derive(Clone)]
pub struct AppState {
    pub db: Primary,
    pub secrets: Arc<Vec<String>>,
    pub tolerance_secs: i64,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(db: Primary, settings: &WebhookSettings, metrics: Arc<Metrics>) -> Self {
        let secrets = settings
            .secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        AppState {
            db,
            secrets: Arc::new(secrets),
            tolerance_secs: settings.tolerance_secs,
            metrics,
        }
    }
}

/// Serves the receiver on an ephemeral loopback port, for tests: its `/webhook/stripe` URL.
pub async fn spawn(db: Primary, settings: &WebhookSettings) -> std::io::Result<String> {
    spawn_with(db, settings, Arc::new(Metrics::default())).await
}

/// [`spawn`], counting into `metrics`.
pub async fn spawn_with(
    db: Primary,
    settings: &WebhookSettings,
    metrics: Arc<Metrics>,
) -> std::io::Result<String> {
    let state = AppState::new(db, settings, metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhook/stripe", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "webhook receiver stopped");
        }
    });
    Ok(url)
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhook/stripe", post(receive))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn reject(metrics: &Metrics, status: StatusCode, code: &'static str) -> Response {
    metrics.inc(
        "webhook_rejected_total",
        "Webhook requests refused, by reason",
        &[("reason", code)],
    );
    tracing::warn!(reason = code, "webhook rejected");
    (status, axum::Json(json!({"error": {"code": code}}))).into_response()
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn receive(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let started = Instant::now();
    s.metrics
        .inc("webhook_received_total", "Webhook requests received", &[]);
    let Ok(body) = body else {
        return reject(&s.metrics, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    };
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify(header, &body, &s.secrets, now_unix(), s.tolerance_secs) {
        return reject(&s.metrics, StatusCode::BAD_REQUEST, e.code());
    }
    s.metrics.inc(
        "webhook_verified_total",
        "Webhook requests with a valid signature",
        &[],
    );
    let answered = match events::ignored_by_type(&body) {
        Some(ignored) => Ok(ignored),
        None => {
            let event: Value = match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) if v["id"].is_string() && v["type"].is_string() => v,
                _ => return reject(&s.metrics, StatusCode::BAD_REQUEST, "event_malformed"),
            };
            events::process_for(&s.db, &event, Via::Webhook).await
        }
    };
    match answered {
        Ok(events::Answered {
            id: event_id,
            kind,
            outcome,
            subject,
            spent,
        }) => {
            if let Some(spent) = spent {
                for (phase, took) in [("pool", spent.waiting), ("transaction", spent.transaction)] {
                    s.metrics.observe(
                        "webhook_event_phase_seconds",
                        "Time a stored event spent at the database: waiting for a pooled connection (pool), then BEGIN to COMMIT (transaction)",
                        &[("phase", phase)],
                        took,
                    );
                }
            }
            s.metrics.inc(
                "webhook_events_total",
                "Verified events by outcome",
                &[("outcome", outcome.as_str())],
            );
            s.metrics.observe(
                "webhook_processing_seconds",
                "From request to commit",
                &[],
                started.elapsed(),
            );
            tracing::info!(
                event_id,
                kind,
                outcome = outcome.as_str(),
                payment_id = subject.payment_id.map(tracing::field::display),
                refund_id = subject.refund_id.map(tracing::field::display),
                "event processed"
            );
            (
                StatusCode::OK,
                axum::Json(json!({"received": true, "outcome": outcome.as_str()})),
            )
                .into_response()
        }
        Err(e) => {
            // 5xx: Stripe retries later; nothing was committed.
            tracing::error!(error = %e, "could not store the event");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {"code": "database_unavailable"}})),
            )
                .into_response()
        }
    }
}

/// Retries due unmatched events every `every` until shutdown; those unmatched for longer
/// than `orphan_after` become `orphaned`. A failed pass is retried at the next turn.
pub async fn unmatched_loop(
    db: Primary,
    every: Duration,
    orphan_after: Duration,
    token: CancellationToken,
) -> Result<(), String> {
    while tick(&token, every).await {
        match events::retry_unmatched(&db, 500, orphan_after).await {
            Ok(r) if r.matched > 0 => {
                tracing::info!(matched = r.matched, "unmatched events now matched")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retrying unmatched events failed"),
        }
    }
    Ok(())
}
