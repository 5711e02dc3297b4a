//! `GET /v1/analytics/summary` and `/v1/analytics/timeseries`, for analyst and operator
//! keys. Everything here, the key check included (`KeysOn::Replica`), reads the
//! replicas: analytics keep answering with the primary down, and never load it.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use paystream_analytics::{AnalyticsError, Bucket, Metric, QueryError, Series, Summary, Window};
use paystream_db::Replica;
use paystream_db::keys::{Principal, Role};
use paystream_report::window::instant;

use crate::AppState;
use crate::error::ApiError;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "analytics_unavailable",
        message,
    )
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        bad(e.to_string())
    }
}

impl From<AnalyticsError> for ApiError {
    fn from(e: AnalyticsError) -> Self {
        match e {
            AnalyticsError::Query(q) => q.into(),
            AnalyticsError::Lagging { .. } => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "replica_lagging",
                    e.to_string(),
                );
                err.retry_after_secs = Some(1);
                err
            }
            other => {
                tracing::warn!(error = %other, "analytics query failed");
                unavailable(other.to_string())
            }
        }
    }
}

/// The window every analytics call shares: `from` (default `24h` back), `to` (default
/// now), both a duration back from now or RFC 3339, and an optional `currency`.
fn window(q: &HashMap<String, String>, allowed: &[&str]) -> Result<Window, ApiError> {
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown parameter {k:?}: expected {}",
            allowed.join(", ")
        )));
    }
    let now = Utc::now();
    let at = |key: &str, default: &str| {
        instant(q.get(key).map_or(default, String::as_str), now)
            .map_err(|e| bad(format!("{key}: {e}")))
    };
    Ok(Window::new(
        at("from", "24h")?,
        at("to", "0s")?,
        q.get("currency").map(String::as_str),
    )?)
}

fn analytics_reader(who: Principal) -> Result<(), ApiError> {
    match who.role {
        Role::Analyst | Role::Operator => Ok(()),
        Role::Client => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "analytics_forbidden",
            "analytics need an analyst or operator key",
        )),
    }
}

pub(crate) fn replica(s: &AppState) -> Result<&Replica, ApiError> {
    s.replica
        .as_ref()
        .ok_or_else(|| unavailable("this instance has no replica configured"))
}

#[utoipa::path(get, path = "/v1/analytics/summary", tag = "analytics",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 or a duration back from now (`24h`, `7d`); default `24h`"),
        ("to" = Option<String>, Query, description = "Same forms; default now"),
        ("currency" = Option<String>, Query, description = "ISO 4217, lowercase; default all"),
    ),
    responses(
        (status = 200, description = "Counts and volume by status, success rate, resolution sources, time to resolution; gross, refunded and net volume per currency, refunds and the refund rate in basis points", body = Summary),
        (status = 400, description = "`invalid_request`", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::openapi::ErrorBody),
        (status = 403, description = "`analytics_forbidden`: client keys", body = crate::openapi::ErrorBody),
        (status = 503, description = "`replica_lagging` (beyond the bound, `Retry-After`) or `analytics_unavailable`", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn summary(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Summary>, ApiError> {
    analytics_reader(who)?;
    let w = window(&q, &["from", "to", "currency"])?;
    Ok(Json(
        paystream_analytics::summary(replica(&s)?, s.analytics, &w).await?,
    ))
}

#[utoipa::path(get, path = "/v1/analytics/timeseries", tag = "analytics",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 or a duration back from now; default `24h`"),
        ("to" = Option<String>, Query, description = "Same forms; default now"),
        ("bucket" = Option<String>, Query, description = "`hour` (default) or `day`, in UTC"),
        ("metric" = Option<String>, Query, description = "`count` (default), `volume` (succeeded minor units; needs `currency`), `success_rate`, `gross_volume`, `refunded_volume`, `net_volume` (captured, refunded and their difference, minor units; need `currency`), `refunds` (succeeded refunds of the bucket's payments) or `refund_rate_bps` (refunded per 10,000 succeeded payments)"),
        ("currency" = Option<String>, Query, description = "ISO 4217, lowercase"),
    ),
    responses(
        (status = 200, description = "One point per bucket overlapping the window", body = Series),
        (status = 400, description = "`invalid_request`", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::openapi::ErrorBody),
        (status = 403, description = "`analytics_forbidden`: client keys", body = crate::openapi::ErrorBody),
        (status = 503, description = "`replica_lagging` (beyond the bound, `Retry-After`) or `analytics_unavailable`", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn timeseries(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Series>, ApiError> {
    analytics_reader(who)?;
    let w = window(&q, &["from", "to", "currency", "bucket", "metric"])?;
    let bucket = Bucket::parse(q.get("bucket").map_or("hour", String::as_str))?;
    let metric = Metric::parse(q.get("metric").map_or("count", String::as_str))?;
    Ok(Json(
        paystream_analytics::timeseries(replica(&s)?, s.analytics, &w, bucket, metric).await?,
    ))
}
