//! Summary and time series, read on a replica in one repeatable-read transaction, so the
//! freshness reported, the rollups and the raw edges are one consistent snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use crate::AnalyticsError;
use crate::histogram::{Percentiles, percentiles};
use crate::plan::{Bucket, Metric, QueryError, Window};

/// What to do with a replica that lags beyond `max_lag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLag {
    /// Answer 503 `replica_lagging`: no stale figure reaches a dashboard.
    Refuse,
    /// Answer, with `"stale": true`.
    Flag,
}

#[derive(Debug, Clone, Copy)]
pub struct Guard {
    pub max_lag: Duration,
    pub on_lag: OnLag,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Freshness {
    /// Everything committed on the primary before this instant is counted: the replica's
    /// last replayed commit, or the rollups' refresh if that is older and they were used.
    pub data_as_of: Option<DateTime<Utc>>,
    /// `pg_last_xact_replay_timestamp()` on the replica that answered.
    pub replica_replayed_at: Option<DateTime<Utc>>,
    /// When the hourly rollups were last refreshed; `null` when this answer used none.
    pub rollups_as_of: Option<DateTime<Utc>>,
    /// 0 when the replica has replayed all it received, else how old its last replayed
    /// commit is; `null` when unknown.
    pub replica_lag_ms: Option<i64>,
    /// Whether the replica is streaming from the primary right now. With the primary down
    /// it is not, and the data stays as of `data_as_of`.
    pub replica_streaming: bool,
    /// The lag exceeds the configured bound (only answered when the service flags).
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
pub struct StatusTotals {
    pub count: i64,
    /// Minor units per currency.
    pub volume: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub currency: Option<String>,
    #[serde(flatten)]
    pub freshness: Freshness,
    /// Payments created in the window.
    pub payments: i64,
    /// `pending`, `succeeded`, `failed`, `canceled`: always all four.
    pub by_status: BTreeMap<String, StatusTotals>,
    /// Succeeded / final payments; `null` when none is final.
    pub success_rate: Option<f64>,
    /// Final payments by what resolved them: api, webhook, poll, expiry, operator.
    pub resolution_sources: BTreeMap<String, i64>,
    /// Creation to resolution of the final payments; `null` when none is final.
    pub time_to_resolution: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// The bucket's start (UTC).
    pub start: DateTime<Utc>,
    /// An integer for `count` and `volume`; a ratio, or `null` with no final payment, for
    /// `success_rate`.
    #[schema(value_type = Option<f64>)]
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Series {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub currency: Option<String>,
    pub bucket: Bucket,
    pub metric: Metric,
    #[serde(flatten)]
    pub freshness: Freshness,
    /// Every bucket overlapping the window, empty ones included.
    pub points: Vec<Point>,
}

const STATUSES: [&str; 4] = ["pending", "succeeded", "failed", "canceled"];

/// One group of payments: bucket start (for series), currency, status, source, count, volume.
struct Group {
    start: Option<DateTime<Utc>>,
    currency: String,
    status: String,
    source: String,
    count: i64,
    volume: i64,
}

pub async fn summary(
    replica: &deadpool_postgres::Pool,
    guard: Guard,
    w: &Window,
) -> Result<Summary, AnalyticsError> {
    let mut client = replica.get().await?;
    let tx = snapshot(&mut client).await?;
    let (freshness, split) = freshness(&tx, guard, w).await?;
    let groups = totals(&tx, w, split, None).await?;
    let hist = tx
        .query(RESOLUTION_SQL, &params(w, &split))
        .await?
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    tx.commit().await?;

    let mut by_status: BTreeMap<String, StatusTotals> = STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), StatusTotals::default()))
        .collect();
    let mut sources = BTreeMap::new();
    for g in &groups {
        let totals = by_status.entry(g.status.clone()).or_default();
        totals.count += g.count;
        *totals.volume.entry(g.currency.clone()).or_default() += g.volume;
        if !g.source.is_empty() {
            *sources.entry(g.source.clone()).or_default() += g.count;
        }
    }
    let count = |s: &str| by_status.get(s).map_or(0, |t| t.count);
    Ok(Summary {
        from: w.from,
        to: w.to,
        currency: w.currency.clone(),
        freshness,
        payments: by_status.values().map(|t| t.count).sum(),
        success_rate: success_rate(
            count("succeeded"),
            count("succeeded") + count("failed") + count("canceled"),
        ),
        by_status,
        resolution_sources: sources,
        time_to_resolution: percentiles(&hist),
    })
}

pub async fn timeseries(
    replica: &deadpool_postgres::Pool,
    guard: Guard,
    w: &Window,
    bucket: Bucket,
    metric: Metric,
) -> Result<Series, AnalyticsError> {
    let currency = w.currency.clone();
    if metric == Metric::Volume && currency.is_none() {
        return Err(QueryError::VolumeNeedsCurrency.into());
    }
    let mut client = replica.get().await?;
    let tx = snapshot(&mut client).await?;
    let (freshness, split) = freshness(&tx, guard, w).await?;
    let groups = totals(&tx, w, split, Some(bucket)).await?;
    tx.commit().await?;

    // (payments, succeeded, final, succeeded volume) per bucket start.
    let mut per: BTreeMap<DateTime<Utc>, (i64, i64, i64, i64)> = BTreeMap::new();
    for g in &groups {
        let Some(start) = g.start else { continue };
        let e = per.entry(start).or_default();
        e.0 += g.count;
        match g.status.as_str() {
            "succeeded" => {
                e.1 += g.count;
                e.2 += g.count;
                e.3 += g.volume;
            }
            "failed" | "canceled" => e.2 += g.count,
            _ => {}
        }
    }
    let points = bucket
        .starts(w.from, w.to)
        .into_iter()
        .map(|start| {
            let (n, ok, fin, vol) = per.get(&start).copied().unwrap_or_default();
            let value = match metric {
                Metric::Count => n.into(),
                Metric::Volume => vol.into(),
                Metric::SuccessRate => success_rate(ok, fin).into(),
            };
            Point { start, value }
        })
        .collect();
    Ok(Series {
        from: w.from,
        to: w.to,
        currency,
        bucket,
        metric,
        freshness,
        points,
    })
}

// A ratio for people to read, computed from the integer counts that are also returned.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
fn success_rate(succeeded: i64, final_: i64) -> Option<f64> {
    (final_ > 0).then(|| succeeded as f64 / final_ as f64)
}

async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

const FRESHNESS_SQL: &str = "
SELECT pg_is_in_recovery(),
       pg_last_xact_replay_timestamp(),
       CASE WHEN pg_last_wal_receive_lsn() IS NULL
              OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::bigint
            ELSE greatest(0, floor(extract(epoch FROM clock_timestamp()
                                   - pg_last_xact_replay_timestamp()) * 1000))::bigint
       END,
       EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming'),
       (SELECT refreshed_at FROM analytics_refresh WHERE id = 1)";

/// How fresh this replica is, the lag bound applied, and the window's split between raw
/// rows and rollups.
async fn freshness(
    tx: &Transaction<'_>,
    guard: Guard,
    w: &Window,
) -> Result<(Freshness, (DateTime<Utc>, DateTime<Utc>)), AnalyticsError> {
    let row = tx.query_one(FRESHNESS_SQL, &[]).await?;
    if !row.get::<_, bool>(0) {
        return Err(AnalyticsError::NotReplica);
    }
    let replayed: Option<DateTime<Utc>> = row.get(1);
    let lag_ms: Option<i64> = row.get(2);
    let refreshed: Option<DateTime<Utc>> = row.get(4);
    let max_ms = i64::try_from(guard.max_lag.as_millis()).unwrap_or(i64::MAX);
    let stale = lag_ms.is_none_or(|l| l > max_ms);
    if stale && guard.on_lag == OnLag::Refuse {
        return Err(AnalyticsError::Lagging { lag_ms, max_ms });
    }
    let split = w.split(refreshed.is_some());
    let rollups_as_of = refreshed.filter(|_| split.0 < split.1);
    let data_as_of = match (replayed, rollups_as_of) {
        (Some(r), Some(u)) => Some(r.min(u)),
        (r, u) => r.or(u),
    };
    Ok((
        Freshness {
            data_as_of,
            replica_replayed_at: replayed,
            rollups_as_of,
            replica_lag_ms: lag_ms,
            replica_streaming: row.get(3),
            stale,
        },
        split,
    ))
}

/// `$1` from, `$2`/`$3` the rollups' whole hours, `$4` to, `$5` the currency or null.
fn params<'a>(
    w: &'a Window,
    split: &'a (DateTime<Utc>, DateTime<Utc>),
) -> [&'a (dyn ToSql + Sync); 5] {
    [&w.from, &split.0, &split.1, &w.to, &w.currency]
}

/// Each part reads through an index range: rollups by hour, raw rows by `created_at`
/// (index-only, the index covers every column read).
fn totals_sql(bucket: Option<Bucket>) -> String {
    let (rolled, raw) = match bucket {
        None => (
            "NULL::timestamptz".to_owned(),
            "NULL::timestamptz".to_owned(),
        ),
        Some(b) => (
            format!("date_trunc('{}', hour, 'UTC')", b.unit()),
            format!("date_trunc('{}', created_at, 'UTC')", b.unit()),
        ),
    };
    let cur = "($5::text IS NULL OR currency = $5::text)";
    format!(
        "SELECT start, currency, status, resolution_source, sum(payments)::bigint, sum(volume)::bigint
         FROM (
            SELECT {rolled} AS start, currency, status, resolution_source, payments, volume
              FROM analytics_hourly WHERE hour >= $2 AND hour < $3 AND {cur}
            UNION ALL
            SELECT {raw}, currency, status, coalesce(resolution_source, ''), 1, amount
              FROM payments WHERE created_at >= $1 AND created_at < $2 AND {cur}
            UNION ALL
            SELECT {raw}, currency, status, coalesce(resolution_source, ''), 1, amount
              FROM payments WHERE created_at >= $3 AND created_at < $4 AND {cur}
         ) parts GROUP BY 1, 2, 3, 4"
    )
}

const RESOLUTION_SQL: &str = "
SELECT lo_ms, sum(payments)::bigint FROM (
    SELECT lo_ms, payments FROM analytics_resolution_hourly
     WHERE hour >= $2 AND hour < $3 AND ($5::text IS NULL OR currency = $5::text)
    UNION ALL
    SELECT analytics_ms_bucket(analytics_resolution_ms(created_at, resolved_at)), 1 FROM payments
     WHERE created_at >= $1 AND created_at < $2 AND resolved_at IS NOT NULL
       AND ($5::text IS NULL OR currency = $5::text)
    UNION ALL
    SELECT analytics_ms_bucket(analytics_resolution_ms(created_at, resolved_at)), 1 FROM payments
     WHERE created_at >= $3 AND created_at < $4 AND resolved_at IS NOT NULL
       AND ($5::text IS NULL OR currency = $5::text)
) parts GROUP BY 1";

async fn totals(
    tx: &Transaction<'_>,
    w: &Window,
    split: (DateTime<Utc>, DateTime<Utc>),
    bucket: Option<Bucket>,
) -> Result<Vec<Group>, tokio_postgres::Error> {
    Ok(tx
        .query(&totals_sql(bucket), &params(w, &split))
        .await?
        .iter()
        .map(|r| Group {
            start: r.get(0),
            currency: r.get(1),
            status: r.get(2),
            source: r.get(3),
            count: r.get(4),
            volume: r.get(5),
        })
        .collect())
}

/// The SQL each answer runs, for `EXPLAIN` in the plan checks and the benchmark.
pub fn sql_for_explain() -> [(&'static str, String); 3] {
    [
        ("summary totals", totals_sql(None)),
        ("summary resolution times", RESOLUTION_SQL.to_owned()),
        ("hourly series", totals_sql(Some(Bucket::Hour))),
    ]
}
