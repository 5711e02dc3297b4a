//! The operators' reconciliation report over HTTP, read from the replicas, operator keys
//! only: `GET /v1/reports/reconciliation` answers with it (small windows), `POST` starts a
//! run in the background and `GET .../runs/{id}` follows it to its stored result.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use paystream_db::keys::{Principal, Role};
use paystream_db::{Primary, Replica, runs};
use paystream_report::render::{Format, render};
use paystream_report::window::instant;
use paystream_report::{Report, Settings};
use paystream_stripe::StripeApi;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

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
    operator_only(&who)?;
    let settings = settings(q.since.as_deref(), q.until.as_deref())?;
    let format = format(q.format.as_deref())?;
    let replica = replica(&s)?;
    let report = paystream_report::run(replica, &*s.stripe, &settings, |_| {})
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reconciliation report failed");
            unavailable(e.to_string())
        })?;
    Ok(rendered(&report, format, None))
}

fn operator_only(who: &Principal) -> Result<(), ApiError> {
    if who.role != Role::Operator {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_only",
            "reports need an operator key",
        ));
    }
    Ok(())
}

fn unavailable(what: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "report_unavailable", what)
}

fn replica(s: &AppState) -> Result<&Replica, ApiError> {
    s.replica
        .as_ref()
        .ok_or_else(|| unavailable("this instance has no replica configured".into()))
}

/// The report's settings from a request's window (a duration back from now, or RFC 3339).
fn settings(since: Option<&str>, until: Option<&str>) -> Result<Settings, ApiError> {
    let now = Utc::now();
    let since = instant(since.unwrap_or("24h"), now).map_err(|e| bad(e.to_string()))?;
    let until = match until {
        Some(u) => instant(u, now).map_err(|e| bad(e.to_string()))?,
        None => now,
    };
    if since >= until || until - since > chrono::Duration::days(MAX_WINDOW_DAYS) {
        return Err(bad(format!(
            "the window must run forward and span at most {MAX_WINDOW_DAYS} days"
        )));
    }
    Ok(Settings {
        since,
        until,
        stuck_after: chrono::Duration::hours(1),
        grace: chrono::Duration::minutes(2),
        // The reports' share of the account's Stripe rate limit (README).
        stripe_rate: 5,
        bulk_from: paystream_report::BULK_FROM,
    })
}

fn format(f: Option<&str>) -> Result<(Format, &'static str), ApiError> {
    Ok(match f.unwrap_or("json") {
        "json" => (Format::Json, "application/json"),
        "csv" => (Format::Csv, "text/csv; charset=utf-8"),
        "html" => (Format::Html, "text/html; charset=utf-8"),
        "table" => (Format::Table, "text/plain; charset=utf-8"),
        other => {
            return Err(bad(format!(
                "unknown format {other:?}: json, csv, html or table"
            )));
        }
    })
}

fn rendered(
    report: &Report,
    (format, content_type): (Format, &str),
    run: Option<Uuid>,
) -> Response {
    let mut res = (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::HeaderName::from_static("x-discrepancies"),
                report.classified.discrepancies().to_string(),
            ),
        ],
        render(report, format),
    )
        .into_response();
    if let Some(run) = run
        && let Ok(v) = HeaderValue::from_str(&run.to_string())
    {
        res.headers_mut().insert("x-report-run", v);
    }
    res
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct WindowQuery {
    /// A duration back from now (`24h`) or RFC 3339; default `24h`.
    since: Option<String>,
    /// Same forms; default now.
    until: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FormatQuery {
    /// `json` (default), `csv`, `html` or `table`: the report's, once done.
    format: Option<String>,
}

/// Where a run is followed.
fn run_path(id: Uuid) -> String {
    format!("/v1/reports/reconciliation/runs/{id}")
}

/// Starts a report in the background and answers at once: a window of a million payments
/// takes minutes at Stripe's rate, longer than any HTTP request should hold a connection.
#[utoipa::path(post, path = "/v1/reports/reconciliation", tag = "reports",
    params(WindowQuery),
    responses(
        (status = 202, description = "Started: `{id, status: running, phase, progress, ...}`, and `Location` where to follow it"),
        (status = 400, description = "`invalid_request`: bad window", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::openapi::ErrorBody),
        (status = 403, description = "`operator_only`: client keys cannot run reports", body = crate::openapi::ErrorBody),
        (status = 503, description = "`report_unavailable` (no replica) or `database_unavailable`", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn start_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<WindowQuery>,
) -> Result<Response, ApiError> {
    operator_only(&who)?;
    let settings = settings(q.since.as_deref(), q.until.as_deref())?;
    let replica = replica(&s)?.clone();
    let id = runs::start_job(&s.db, settings.since, settings.until).await?;
    tokio::spawn(run_in_background(
        s.db.clone(),
        replica,
        s.stripe.clone(),
        settings,
        id,
    ));
    let job = runs::job(&s.db, id)
        .await?
        .ok_or_else(|| unavailable("the run vanished".into()))?;
    let mut res = (StatusCode::ACCEPTED, Json(json!(job))).into_response();
    if let Ok(v) = HeaderValue::from_str(&run_path(id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// The report, beating every second with how far it got; stored as a run when done.
async fn run_in_background(
    db: Primary,
    replica: Replica,
    stripe: Arc<StripeApi>,
    settings: Settings,
    id: Uuid,
) {
    let now = Arc::new(std::sync::Mutex::new(paystream_report::Progress {
        phase: "starting",
        done: 0,
    }));
    let beat = {
        let (db, now) = (db.clone(), now.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let p = *now.lock().unwrap_or_else(|p| p.into_inner());
                let done = i64::try_from(p.done).unwrap_or(i64::MAX);
                if let Err(e) = runs::job_progress(&db, id, p.phase, done).await {
                    tracing::warn!(run = %id, error = %e, "report run heartbeat failed");
                }
            }
        })
    };
    let report = paystream_report::run(&replica, &*stripe, &settings, |p| {
        *now.lock().unwrap_or_else(|p| p.into_inner()) = p;
    })
    .await;
    beat.abort();
    let outcome = match report {
        Ok(r) => paystream_report::runs::store(&db, &r)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &outcome {
        tracing::warn!(run = %id, error = %e, "reconciliation report run failed");
    }
    if let Err(e) = runs::end_job(&db, id, outcome.as_ref().copied().map_err(String::as_str)).await
    {
        tracing::error!(run = %id, error = %e, "could not record the end of a report run");
    }
}

#[utoipa::path(get, path = "/v1/reports/reconciliation/runs/{id}", tag = "reports",
    params(("id" = Uuid, Path, description = "The run's id, from its `Location`"), FormatQuery),
    responses(
        (status = 200, description = "Done: the report in `format`, with `X-Discrepancies` and `X-Report-Run` (the stored run, as `paystream reports` lists it); or, JSON, a run that `failed` or was `abandoned` (its instance stopped), with `error`"),
        (status = 202, description = "Still `running`: `{id, status, phase, progress, started_at, ...}`, `Retry-After: 1`"),
        (status = 400, description = "`invalid_request`: bad format", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::openapi::ErrorBody),
        (status = 403, description = "`operator_only`", body = crate::openapi::ErrorBody),
        (status = 404, description = "`report_run_not_found`", body = crate::openapi::ErrorBody),
        (status = 503, description = "`report_unavailable` or `database_unavailable`", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    operator_only(&who)?;
    let format = format(q.format.as_deref())?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "report_run_not_found",
            "no such report run",
        )
    };
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let job = runs::job(&s.db, id).await?.ok_or_else(not_found)?;
    let still = |job: &runs::Job| {
        let mut res = (StatusCode::ACCEPTED, Json(json!(job))).into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        res
    };
    match (job.status.as_str(), job.run_id) {
        ("done", Some(run)) => {
            match paystream_report::runs::load(replica(&s)?, run).await? {
                Some(report) => Ok(rendered(&report, format, Some(run))),
                // Stored on the primary a moment ago; the replica has not replayed it yet.
                None => Ok(still(&job)),
            }
        }
        ("running", _) => Ok(still(&job)),
        _ => Ok(Json(json!(job)).into_response()),
    }
}
