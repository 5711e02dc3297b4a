//! Summary and time series, read on a replica in one repeatable-read transaction, so the
//! freshness reported, the rollups and the raw edges are one consistent snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_core::PaymentStatus;
use paystream_db::Replica;
use paystream_db::replica::analytics::{self, Answer, MoneyGroup, Request, Trunc};

/// The SQL each answer runs, for `EXPLAIN` in the plan checks and the benchmark.
pub use paystream_db::replica::analytics::sql_for_explain;
use serde::{Deserialize, Serialize};

use crate::AnalyticsError;
use crate::histogram::{Percentiles, percentiles};
use crate::plan::{Bucket, Metric, QueryError, Window, basis_points};

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
    /// When the rollups were last refreshed; `null` when this answer used none.
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
    /// What the window's succeeded payments captured, minor units per currency (every
    /// currency with a succeeded payment, also in the two maps below).
    pub gross_volume: BTreeMap<String, i64>,
    /// What the succeeded refunds of the window's payments gave back, minor units per
    /// currency. A refund counts with its payment, whenever it was made.
    pub refunded_volume: BTreeMap<String, i64>,
    /// Gross less refunded, per currency.
    pub net_volume: BTreeMap<String, i64>,
    /// Succeeded refunds of the window's payments.
    pub refunds: i64,
    /// Succeeded payments of the window with at least one succeeded refund.
    pub refunded_payments: i64,
    /// `refunded_payments` per 10,000 succeeded payments (basis points, rounded down);
    /// `null` when none succeeded.
    pub refund_rate_bps: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// The bucket's start (UTC).
    pub start: DateTime<Utc>,
    /// An integer for `count`, the volumes, `refunds` and `refund_rate_bps` (basis points,
    /// `null` with no succeeded payment); a ratio, or `null` with no final payment, for
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

pub async fn summary(
    replica: &Replica,
    guard: Guard,
    w: &Window,
) -> Result<Summary, AnalyticsError> {
    let answer = read(replica, guard, w, None, true).await?;
    let (freshness, groups, hist) = (answer.0, answer.1.groups, answer.1.resolution_ms);
    let money = answer.1.money;
    let mut by_status: BTreeMap<String, StatusTotals> = STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), StatusTotals::default()))
        .collect();
    let mut sources = BTreeMap::new();
    for g in &groups {
        let totals = by_status.entry(g.status.as_str().to_owned()).or_default();
        totals.count += g.count;
        *totals.volume.entry(g.currency.clone()).or_default() += g.volume;
        if let Some(source) = g.source {
            *sources.entry(source.as_str().to_owned()).or_default() += g.count;
        }
    }
    let count = |s: &str| by_status.get(s).map_or(0, |t| t.count);
    let (mut gross, mut refunded, mut net) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let (mut succeeded, mut refunded_payments, mut refunds) = (0, 0, 0);
    for m in &money {
        *gross.entry(m.currency.clone()).or_default() += m.captured;
        *refunded.entry(m.currency.clone()).or_default() += m.refunded;
        *net.entry(m.currency.clone()).or_default() += m.captured - m.refunded;
        succeeded += m.payments;
        refunded_payments += m.refunded_payments;
        refunds += m.refunds;
    }
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
        gross_volume: gross,
        refunded_volume: refunded,
        net_volume: net,
        refunds,
        refunded_payments,
        refund_rate_bps: basis_points(refunded_payments, succeeded),
    })
}

pub async fn timeseries(
    replica: &Replica,
    guard: Guard,
    w: &Window,
    bucket: Bucket,
    metric: Metric,
) -> Result<Series, AnalyticsError> {
    let currency = w.currency.clone();
    if metric.needs_currency() && currency.is_none() {
        return Err(QueryError::VolumeNeedsCurrency.into());
    }
    let trunc = match bucket {
        Bucket::Hour => Trunc::Hour,
        Bucket::Day => Trunc::Day,
    };
    let (freshness, answer) = read(replica, guard, w, Some(trunc), false).await?;
    let groups = answer.groups;
    let mut money: BTreeMap<DateTime<Utc>, MoneyGroup> = BTreeMap::new();
    for m in &answer.money {
        let Some(start) = m.start else { continue };
        let e = money.entry(start).or_default();
        e.payments += m.payments;
        e.captured += m.captured;
        e.refunded_payments += m.refunded_payments;
        e.refunds += m.refunds;
        e.refunded += m.refunded;
    }

    // (payments, succeeded, final, succeeded volume) per bucket start.
    let mut per: BTreeMap<DateTime<Utc>, (i64, i64, i64, i64)> = BTreeMap::new();
    for g in &groups {
        let Some(start) = g.start else { continue };
        let e = per.entry(start).or_default();
        e.0 += g.count;
        match g.status {
            PaymentStatus::Succeeded => {
                e.1 += g.count;
                e.2 += g.count;
                e.3 += g.volume;
            }
            PaymentStatus::Failed | PaymentStatus::Canceled => e.2 += g.count,
            PaymentStatus::Pending => {}
        }
    }
    let points = bucket
        .starts(w.from, w.to)
        .into_iter()
        .map(|start| {
            let (n, ok, fin, vol) = per.get(&start).copied().unwrap_or_default();
            let m = money.get(&start).cloned().unwrap_or_default();
            let value = match metric {
                Metric::Count => n.into(),
                Metric::Volume => vol.into(),
                Metric::SuccessRate => success_rate(ok, fin).into(),
                Metric::GrossVolume => m.captured.into(),
                Metric::RefundedVolume => m.refunded.into(),
                Metric::NetVolume => (m.captured - m.refunded).into(),
                Metric::Refunds => m.refunds.into(),
                Metric::RefundRateBps => basis_points(m.refunded_payments, m.payments).into(),
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

/// Reads in one snapshot on the replica, refusing a primary and (if so configured) a
/// replica lagging beyond the bound.
async fn read(
    replica: &Replica,
    guard: Guard,
    w: &Window,
    trunc: Option<Trunc>,
    resolution_times: bool,
) -> Result<(Freshness, Answer), AnalyticsError> {
    let req = Request {
        from: w.from,
        to: w.to,
        currency: w.currency.as_deref(),
        trunc,
        resolution_times,
    };
    let mut stale = false;
    let answer = analytics::read(replica, &req, |f| {
        if !f.in_recovery {
            return Err(AnalyticsError::NotReplica);
        }
        let max_ms = i64::try_from(guard.max_lag.as_millis()).unwrap_or(i64::MAX);
        stale = f.lag_ms.is_none_or(|l| l > max_ms);
        if stale && guard.on_lag == OnLag::Refuse {
            return Err(AnalyticsError::Lagging {
                lag_ms: f.lag_ms,
                max_ms,
            });
        }
        Ok(w.split(f.rollups_refreshed_at, f.rollup_minutes))
    })
    .await?;
    let f = &answer.freshness;
    let rollups_as_of = f
        .rollups_refreshed_at
        .filter(|_| answer.split.uses_rollups());
    let data_as_of = match (f.replayed_at, rollups_as_of) {
        (Some(r), Some(u)) => Some(r.min(u)),
        (r, u) => r.or(u),
    };
    let freshness = Freshness {
        data_as_of,
        replica_replayed_at: f.replayed_at,
        rollups_as_of,
        replica_lag_ms: f.lag_ms,
        replica_streaming: f.streaming,
        stale,
    };
    Ok((freshness, answer))
}
