//! Stored reconciliation report runs, written to the primary when a report is made. They
//! are read back from a replica (`replica::runs`, `replica::run_report`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{DbError, Primary};

pub struct NewRun<'a> {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub discrepancies: i64,
    /// Per class.
    pub counts: &'a Value,
    /// The whole report, as its JSON.
    pub report: &'a Value,
}

pub async fn store(primary: &Primary, run: &NewRun<'_>) -> Result<Uuid, DbError> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO reconciliation_runs (id, since, until, generated_at, discrepancies, counts, report)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(run.since)
    .bind(run.until)
    .bind(run.generated_at)
    .bind(run.discrepancies)
    .bind(run.counts)
    .bind(run.report)
    .execute(primary.pool())
    .await?;
    Ok(id)
}

/// A reconciliation report running in the background (or its end).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// `running`, `done`, `failed`, or `abandoned` (running, but its instance stopped
    /// beating: it will not finish; start another).
    pub status: String,
    pub phase: String,
    pub progress: i64,
    pub error: Option<String>,
    /// The stored run, once done.
    pub run_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job that has not beaten for this long is abandoned.
pub const ABANDONED_AFTER_SECS: i64 = 30;

pub async fn start_job(
    primary: &Primary,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Uuid, DbError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO report_jobs (id, since, until) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(since)
        .bind(until)
        .execute(primary.pool())
        .await?;
    Ok(id)
}

/// The job's heartbeat, with what it is doing.
pub async fn job_progress(
    primary: &Primary,
    id: Uuid,
    phase: &str,
    progress: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE report_jobs SET phase = $2, progress = $3, heartbeat_at = now()
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(phase)
    .bind(progress)
    .execute(primary.pool())
    .await?;
    Ok(())
}

/// Ends a job: its stored run, or why it failed.
pub async fn end_job(
    primary: &Primary,
    id: Uuid,
    outcome: Result<Uuid, &str>,
) -> Result<(), DbError> {
    let (status, run_id, error) = match outcome {
        Ok(run) => ("done", Some(run), None),
        Err(e) => ("failed", None, Some(e)),
    };
    sqlx::query(
        "UPDATE report_jobs SET status = $2, run_id = $3, error = $4, phase = $2,
                finished_at = now(), heartbeat_at = now()
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(status)
    .bind(run_id)
    .bind(error)
    .execute(primary.pool())
    .await?;
    Ok(())
}

/// A job as it stands (read on the primary: a job's state is seconds old at most, and
/// one row by its key costs the primary nothing).
pub async fn job(primary: &Primary, id: Uuid) -> Result<Option<Job>, DbError> {
    let row: Option<Job> = sqlx::query_as(
        "SELECT id, since, until,
                CASE WHEN status = 'running' AND heartbeat_at < now() - $2::bigint * interval '1 second'
                     THEN 'abandoned' ELSE status END AS status,
                phase, progress, error, run_id, started_at, finished_at
         FROM report_jobs WHERE id = $1",
    )
    .bind(id)
    .bind(ABANDONED_AFTER_SECS)
    .fetch_optional(primary.pool())
    .await?;
    Ok(row)
}
