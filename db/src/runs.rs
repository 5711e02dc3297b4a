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
