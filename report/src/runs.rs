//! Stored report runs: written to the primary when a report is made, read back from a
//! replica to list, re-render and diff.

use std::collections::BTreeMap;

use paystream_db::DbError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::source::SourceError;
use crate::{Class, Report};

pub async fn store(primary: &PgPool, r: &Report) -> Result<Uuid, DbError> {
    let id = Uuid::now_v7();
    let report = serde_json::to_value(r).unwrap_or_default();
    sqlx::query(
        "INSERT INTO reconciliation_runs (id, since, until, generated_at, discrepancies, counts, report)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(r.since)
    .bind(r.until)
    .bind(r.generated_at)
    .bind(i64::try_from(r.classified.discrepancies()).unwrap_or(i64::MAX))
    .bind(serde_json::to_value(&r.classified.counts).unwrap_or_default())
    .bind(report)
    .execute(primary)
    .await?;
    Ok(id)
}

/// One line of the run list.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub id: Uuid,
    pub since: chrono::DateTime<chrono::Utc>,
    pub until: chrono::DateTime<chrono::Utc>,
    pub generated_at: chrono::DateTime<chrono::Utc>,
    pub discrepancies: i64,
}

pub async fn list(
    replica: &deadpool_postgres::Pool,
    limit: i64,
) -> Result<Vec<RunSummary>, SourceError> {
    let client = replica.get().await?;
    let rows = client
        .query(
            "SELECT id, since, until, generated_at, discrepancies FROM reconciliation_runs
             ORDER BY generated_at DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RunSummary {
            id: r.get(0),
            since: r.get(1),
            until: r.get(2),
            generated_at: r.get(3),
            discrepancies: r.get(4),
        })
        .collect())
}

pub async fn load(
    replica: &deadpool_postgres::Pool,
    id: Uuid,
) -> Result<Option<Report>, SourceError> {
    let client = replica.get().await?;
    let row = client
        .query_opt(
            "SELECT report::text FROM reconciliation_runs WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.and_then(|r| serde_json::from_str(r.get::<_, &str>(0)).ok()))
}

/// What changed between two runs, per payment (or intent, for orphans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub before: Option<Class>,
    pub after: Option<Class>,
}

pub fn diff(a: &Report, b: &Report) -> Vec<Change> {
    let index = |r: &Report| -> BTreeMap<String, Class> {
        r.classified
            .findings
            .iter()
            .map(|f| {
                let key = f
                    .payment_id
                    .map(|p| p.to_string())
                    .or_else(|| f.intent_id.clone())
                    .unwrap_or_default();
                (key, f.class)
            })
            .collect()
    };
    let (before, after) = (index(a), index(b));
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (before.get(k).copied(), after.get(k).copied());
            (x != y).then(|| Change {
                key: k.clone(),
                before: x,
                after: y,
            })
        })
        .collect()
}

pub fn render_diff(changes: &[Change]) -> String {
    let name = |c: Option<Class>| c.map_or("(none)", Class::as_str);
    let mut out = format!("{} change(s)\n", changes.len());
    for c in changes {
        out.push_str(&format!(
            "{:<40} {:<18} -> {}\n",
            c.key,
            name(c.before),
            name(c.after)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Finding, Ours, classify};
    use chrono::DateTime;

    fn report(findings: Vec<(Uuid, Class)>) -> Report {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut c = classify(&[] as &[Ours], &[], t, chrono::Duration::hours(1));
        c.findings = findings
            .into_iter()
            .map(|(id, class)| Finding {
                class,
                payment_id: Some(id),
                intent_id: None,
                ours: None,
                stripe: None,
                created_at: Some(t),
                note: None,
            })
            .collect();
        Report {
            since: t,
            until: t,
            generated_at: t,
            data_as_of: None,
            stuck_after_secs: 3600,
            payments: 0,
            stripe_intents: 0,
            classified: c,
            timeline: Vec::new(),
        }
    }

    #[test]
    fn a_stored_report_reads_back_equal_and_diffs_name_each_change() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let old = report(vec![(a, Class::StatusMismatch), (b, Class::StuckPending)]);
        let new = report(vec![(b, Class::StuckPending), (c, Class::AmountMismatch)]);
        let back: Report = serde_json::from_value(serde_json::to_value(&old).unwrap()).unwrap();
        assert_eq!(back.classified, old.classified);
        let d = diff(&old, &new);
        assert_eq!(
            d,
            [
                Change {
                    key: a.to_string(),
                    before: Some(Class::StatusMismatch),
                    after: None
                },
                Change {
                    key: c.to_string(),
                    before: None,
                    after: Some(Class::AmountMismatch)
                },
            ]
        );
        assert!(render_diff(&d).starts_with("2 change(s)"));
    }
}
