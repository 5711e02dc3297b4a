//! The payment API. `router` builds the whole app; `main.rs` only loads config and serves.

pub mod analytics;
pub mod auth;
pub mod config;
pub mod error;
pub mod openapi;
pub mod payments;
pub mod ratelimit;
pub mod refunds;
pub mod reports;
pub mod validation;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use paystream_db::keys::{Principal, Role};
use paystream_db::{Primary, Replica, replica};
use paystream_service::Metrics;
use paystream_stripe::StripeApi;

use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::ratelimit::RateLimiter;

/// Bodies above this are refused with 413 before they are read.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub db: Primary,
    pub stripe: Arc<StripeApi>,
    pub max_amount: i64,
    pub lease: Duration,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// The replicas, for operator reports and analytics (never the primary); `None`
    /// disables both.
    pub replica: Option<Replica>,
    /// The replica lag analytics accept, and what they do beyond it.
    pub analytics: paystream_analytics::Guard,
    /// Who may have a key looked up, and how fast (see `auth`).
    pub keys: Arc<auth::KeyGate>,
}

impl AppState {
    pub fn new(db: Primary, cfg: &ApiConfig, metrics: Arc<Metrics>) -> Result<Self, StateError> {
        let stripe = StripeApi::new(
            &cfg.stripe.api_base,
            &cfg.stripe.secret_key,
            Duration::from_millis(cfg.stripe.timeout_ms),
        )?;
        Ok(AppState {
            db,
            stripe: Arc::new(stripe),
            max_amount: cfg.max_amount,
            lease: Duration::from_secs(cfg.idempotency_lease_secs),
            limiter: Arc::new(RateLimiter::new(cfg.rate_limit)),
            metrics,
            replica: cfg
                .replica
                .as_ref()
                .map(|r| Replica::new(&r.url, 2))
                .transpose()?,
            analytics: paystream_analytics::Guard {
                max_lag: Duration::from_millis(cfg.analytics.max_lag_ms),
                on_lag: cfg.analytics.on_lag,
            },
            keys: Arc::default(),
        })
    }
}

/// Settings the state cannot be built from: a fault at start, never per request.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("stripe settings: {0}")]
    Stripe(#[from] paystream_core::GatewayError),
    #[error(transparent)]
    Replica(#[from] paystream_db::DbError),
}

pub fn router(state: AppState) -> Router {
    let analytics = Router::new()
        .route("/v1/analytics/summary", get(analytics::summary))
        .route("/v1/analytics/timeseries", get(analytics::timeseries))
        .layer(middleware::from_fn_with_state(
            (state.clone(), KeysOn::Replica),
            authenticate,
        ));
    Router::new()
        .route("/v1/payments", post(payments::create).get(payments::list))
        .route("/v1/payments/{id}", get(payments::get))
        .route("/v1/payments/{id}/events", get(payments::events))
        .route("/v1/payments/{id}/cancel", post(payments::cancel))
        .route("/v1/payments/{id}/capture", post(payments::capture))
        .route(
            "/v1/payments/{id}/refunds",
            post(refunds::create).get(refunds::list),
        )
        .route("/v1/refunds/{id}", get(refunds::get))
        .route(
            "/v1/reports/reconciliation",
            get(reports::reconciliation).post(reports::start_run),
        )
        .route(
            "/v1/reports/reconciliation/runs/{id}",
            get(reports::get_run),
        )
        .layer(middleware::from_fn_with_state(
            (state.clone(), KeysOn::Primary),
            authenticate,
        ))
        .merge(analytics)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
        // Public: the contract is no secret.
        .merge(openapi::docs())
}

/// The bearer key of a request, if any.
fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

/// The key's rate limit.
fn admit(state: &AppState, principal: Principal, now: Instant) -> Result<(), ApiError> {
    state
        .limiter
        .check(principal.client_id, now)
        .map_err(|retry_after| {
            let mut err = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this API key",
            );
            err.retry_after_secs = Some(retry_after);
            err
        })
}

/// Where a route group looks its keys up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeysOn {
    /// Payments and reports: revocation takes effect as soon as the instance hears of it
    /// (see `auth`).
    Primary,
    /// Analytics: they keep answering with the primary down, and never load it. A key
    /// created or revoked on the primary takes effect once the replica has replayed it.
    Replica,
}

/// Resolves the API key to a principal and applies its rate limit. The key itself is
/// never logged. Analyst keys read analytics only; the analytics handlers check the rest.
async fn authenticate(
    State((state, on)): State<(AppState, KeysOn)>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(key) = bearer(&req) else {
        return ApiError::unauthorized().into_response();
    };
    let key = key.as_str();
    let looked_up = state
        .keys
        .check(key, on == KeysOn::Primary, || async {
            match on {
                KeysOn::Primary => Ok(paystream_db::keys::authenticate(&state.db, key).await?),
                KeysOn::Replica => {
                    let replica = analytics::replica(&state)?;
                    replica::authenticate(replica, key).await.map_err(|e| {
                        // The cause is logged, never shown: the caller is not known yet.
                        tracing::warn!(error = %e, "key check on the replica failed");
                        analytics::unavailable("the replicas are unavailable; retry later")
                    })
                }
            }
        })
        .await;
    let principal = match looked_up {
        Ok(Some(p)) => p,
        Ok(None) => return ApiError::unauthorized().into_response(),
        Err(e) => return e.into_response(),
    };
    if on == KeysOn::Primary && principal.role == Role::Analyst {
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "analytics_only",
            "analyst keys read /v1/analytics only",
        )
        .into_response();
    }
    if let Err(e) = admit(&state, principal, Instant::now()) {
        return e.into_response();
    }
    req.extensions_mut().insert::<Principal>(principal);
    next.run(req).await
}
