//! `GET /v1/reports/reconciliation`: the operators' reconciliation report over HTTP,
//! read from the replicas. Operator keys only.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use paystream_db::keys::{Principal, Role};
use paystream_report::render::{Format, render};
use paystream_report::window::instant;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;

/// Long windows list many intents at Stripe's rate: bounded here, the CLI has no bound.
const MAX_WINDOW_DAYS: i64 = 31;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReportQuery {
    /// A duration back from now (`24h`) or RFC 3339; default `24h`.
    since: Option<String>,
    /// Same forms; default now.
    until: Option<String>,
    /// `json` (default), `csv`, `html` or `table`.
    format: Option<String>,
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

#[utoipa::path(get, path = "/v1/reports/reconciliation", tag = "reports",
    params(ReportQuery),
    responses(
        (status = 200, description = "The report; `X-Discrepancies` says how many payments and refunds are not matched (`matched`, `refund_matched`)"),
        (status = 400, description = "`invalid_request`: bad window or format", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::openapi::ErrorBody),
        (status = 403, description = "`operator_only`: client keys cannot read reports", body = crate::openapi::ErrorBody),
        (status = 503, description = "`report_unavailable`: the replicas or Stripe could not be read", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn reconciliation(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    if who.role != Role::Operator {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_only",
            "reports need an operator key",
        ));
    }
    let now = Utc::now();
    let since =
        instant(q.since.as_deref().unwrap_or("24h"), now).map_err(|e| bad(e.to_string()))?;
    let until = match q.until.as_deref() {
        Some(u) => instant(u, now).map_err(|e| bad(e.to_string()))?,
        None => now,
    };
    if since >= until || until - since > chrono::Duration::days(MAX_WINDOW_DAYS) {
        return Err(bad(format!(
            "the window must run forward and span at most {MAX_WINDOW_DAYS} days"
        )));
    }
    let (format, content_type) = match q.format.as_deref().unwrap_or("json") {
        "json" => (Format::Json, "application/json"),
        "csv" => (Format::Csv, "text/csv; charset=utf-8"),
        "html" => (Format::Html, "text/html; charset=utf-8"),
        "table" => (Format::Table, "text/plain; charset=utf-8"),
        other => {
            return Err(bad(format!(
                "unknown format {other:?}: json, csv, html or table"
            )));
        }
    };
    let unavailable =
        |what: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "report_unavailable", what);
    let replica = s
        .replica
        .as_ref()
        .ok_or_else(|| unavailable("this instance has no replica configured".into()))?;
    let settings = paystream_report::Settings {
        since,
        until,
        stuck_after: chrono::Duration::hours(1),
        grace: chrono::Duration::minutes(2),
        stripe_rate: 20,
    };
    let report = paystream_report::run(replica, &*s.stripe, &settings, |_| {})
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reconciliation report failed");
            unavailable(e.to_string())
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::HeaderName::from_static("x-discrepancies"),
                report.classified.discrepancies().to_string(),
            ),
        ],
        render(&report, format),
    )
        .into_response())
}
